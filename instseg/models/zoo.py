"""Print the model table of README.md: `python -m instseg.models.zoo`.

Builds every `conf/model/*.yaml` (91 outputs, as COCO weights have) and reports its backbone,
parameter count, compute per image at its test size (`instseg.models.cost`: GFLOPs as
multiply-adds, torchvision's convention), the weights torchvision publishes for it and their
COCO val2017 AP.
"""

from __future__ import annotations

from torchvision.models import get_model_weights, get_weight

from instseg import configs
from instseg.models.build import instantiate_module
from instseg.models.cost import model_cost


def model_rows() -> list[dict[str, str]]:
    rows = []
    for model in configs.options("model"):
        cfg = configs.compose("train", [f"model={model}"])
        net = instantiate_module(configs.model_config(cfg, num_classes=91)).net
        backbone = cfg.model.net.backbone
        imagenet = [w.name for w in get_model_weights(backbone.arch)]
        row = {
            "model": f"`model={model}`",
            "backbone": f"{backbone.arch}, {backbone.get('out_channels', 256)}-ch FPN",
            "parameters": f"{sum(p.numel() for p in net.parameters()) / 1e6:.1f} M",
            "compute (multiply-adds)": model_cost(net).describe(),
            "weights": "ImageNet body: " + ", ".join(imagenet),
            "published COCO AP (box / mask)": "-",
        }
        if cfg.model.get("coco_weights"):
            enum = get_weight(cfg.model.coco_weights)
            metrics = enum.meta["_metrics"]["COCO-val2017"]
            row["weights"] = f"COCO: `model.weights=coco` ({enum}); " + row["weights"]
            row["published COCO AP (box / mask)"] = f"{metrics['box_map']} / {metrics['mask_map']}"
        rows.append(row)
    return rows


def main() -> None:
    rows = model_rows()
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row[k] for k in header) + " |")


if __name__ == "__main__":
    main()
