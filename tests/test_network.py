"""No test reaches the network, whether or not the machine has one (tests/conftest.py sends
every HTTP(S) request of the tests and of the processes they start to a closed port)."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request

import pytest

URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"


def test_a_download_in_the_tests_fails_at_once():
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(URL, timeout=10)


def test_a_download_in_a_process_the_tests_start_fails_at_once():
    code = ("import urllib.request, urllib.error\n"
            "try:\n"
            f"    urllib.request.urlopen({URL!r}, timeout=10)\n"
            "except urllib.error.URLError:\n"
            "    raise SystemExit(0)\n"
            "raise SystemExit(1)\n")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
