"""python -m instseg.demo input=... [ckpt=...]: the same as the instseg-demo command."""

from instseg.demo.cli import main

if __name__ == "__main__":
    main()
