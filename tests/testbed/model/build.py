"""Build TorchServe model archives (.mar) of the test classifier, cached by content hash.

Stdlib only: runs under the main venv (tests) or the TorchServe venv (scripts/build/torchserve.sh).
Torch work (scripting the model) and torch-model-archiver run in $GPUOPS_CACHE/torchserve-venv.

    python -m tests.testbed.model.build --presets          # classifier 1.0, 2.0, 3.0
    python -m tests.testbed.model.build 4.0 --fail-rate 0.3 --delay-ms 50

Archive name: ``<model>-<version>-<hash12>.mar`` in $GPUOPS_CACHE/model-store. The hash covers the
handler, the model source, the model config (fail_rate, delay_ms), name, version and the pinned
archiver, so a changed handler or preset produces a new archive and an unchanged one is reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Optional

from tests.testbed.common import CACHE, TestbedError

HERE = Path(__file__).resolve().parent
HANDLER = HERE / "handler.py"
MAKE_MODEL = HERE / "make_model.py"
METRICS_CONFIG = HERE / "metrics.yaml"
TS_VENV = Path(os.environ.get("GPUOPS_TS_VENV", str(CACHE / "torchserve-venv")))
MODEL_STORE = CACHE / "model-store"
MODEL_NAME = "classifier"
ARCHIVER_PIN = "torch-model-archiver==0.12.0"

# Preset versions of model "classifier" (built by scripts/build/torchserve.sh):
#   1.0 healthy and fast, 2.0 fails half of its requests, 3.0 healthy but slow.
PRESETS: Dict[str, Dict[str, float]] = {
    "1.0": {"fail_rate": 0.0, "delay_ms": 0},
    "2.0": {"fail_rate": 0.5, "delay_ms": 0},
    "3.0": {"fail_rate": 0.0, "delay_ms": 300},
}

_VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$")
_NAME_RE = re.compile(r"^[A-Za-z][0-9A-Za-z_-]{0,63}$")


def ts_bin(name: str) -> Path:
    """Path of an executable of the TorchServe venv, or a clear error."""
    path = TS_VENV / "bin" / name
    if not path.exists():
        raise TestbedError(f"{path} not found: run scripts/build/torchserve.sh "
                           "(or scripts/setup torchserve)")
    return path


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()


def base_model(store: Path = MODEL_STORE, hidden: int = 0) -> Path:
    """The scripted model file (built once per model source and size, cached).

    ``hidden`` 0 is the test bed's tiny classifier; > 0 the benchmark's MLP (make_model.py)."""
    hidden = int(hidden)
    if hidden < 0:
        raise ValueError(f"hidden {hidden!r} must be 0 (tiny classifier) or a positive layer width")
    digest = _sha(MAKE_MODEL.read_bytes(), (TS_VENV / ".lock").read_bytes()
                  if (TS_VENV / ".lock").exists() else b"", str(hidden).encode() if hidden else b"")[:12]
    out = store / ".base" / (f"classifier-mlp{hidden}-{digest}.pt" if hidden else f"classifier-{digest}.pt")
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    res = subprocess.run([str(ts_bin("python")), str(MAKE_MODEL), str(tmp), "--hidden", str(hidden)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise TestbedError(f"scripting the test model failed (rc={res.returncode}):\n{res.stderr}")
    os.replace(tmp, out)
    return out


def model_config(fail_rate: float = 0.0, delay_ms: int = 0, load_gate: str = "") -> dict:
    """The model-config yaml put in the archive (--config-file); the handler reads ``handler``.
    ``load_gate``: a path in the worker's file system; initialize() waits until it exists (the lab's
    readiness test opens it inside the pod)."""
    handler = {"fail_rate": float(fail_rate), "delay_ms": int(delay_ms)}
    if load_gate:
        handler["load_gate"] = str(load_gate)
    return {
        # TorchServe keys: generous timeouts, a slow (delay_ms) version must not be killed.
        "responseTimeout": 120,
        "startupTimeout": 120,
        # Our handler's own section (context.model_yaml_config["handler"]).
        "handler": handler,
    }


def validate(version: str, fail_rate: float, delay_ms: int, model_name: str) -> None:
    if not _VERSION_RE.match(str(version)):
        raise ValueError(f"model version {version!r}: use letters, digits, '.', '_' or '-' "
                         "(e.g. '2.0'), at most 64 characters")
    if not _NAME_RE.match(model_name):
        raise ValueError(f"model name {model_name!r}: start with a letter, then letters, digits, '_' or '-'")
    if not 0.0 <= float(fail_rate) <= 1.0:
        raise ValueError(f"fail_rate {fail_rate!r} must be between 0 and 1")
    if int(delay_ms) < 0 or int(delay_ms) != float(delay_ms):
        raise ValueError(f"delay_ms {delay_ms!r} must be a non-negative integer (milliseconds)")


def build_archive(version: str, fail_rate: float = 0.0, delay_ms: int = 0,
                  model_name: str = MODEL_NAME, store: Optional[Path] = None, hidden: int = 0,
                  load_gate: str = "") -> Path:
    """Return the path of ``<model_name>`` version ``version`` with these faults; build it if missing.

    ``hidden`` > 0 archives the benchmark's MLP instead of the tiny classifier (base_model);
    ``load_gate`` see model_config."""
    validate(version, fail_rate, delay_ms, model_name)
    store = Path(store or MODEL_STORE)
    cfg = json.dumps(model_config(fail_rate, delay_ms, load_gate), sort_keys=True, indent=2)
    pt = base_model(store, hidden)
    digest = _sha(HANDLER.read_bytes(), pt.name.encode(), cfg.encode(), model_name.encode(),
                  str(version).encode(), ARCHIVER_PIN.encode())[:12]
    out = store / f"{model_name}-{version}-{digest}.mar"
    if out.exists():
        return out
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mar-", dir=str(store)) as tmp:
        cfg_file = Path(tmp) / "model-config.yaml"
        cfg_file.write_text(cfg + "\n")  # JSON is valid YAML
        argv = [str(ts_bin("torch-model-archiver")), "--model-name", model_name,
                "--version", str(version), "--serialized-file", str(pt),
                "--handler", str(HANDLER), "--config-file", str(cfg_file),
                "--export-path", tmp, "--archive-format", "default", "--force"]
        res = subprocess.run(argv, capture_output=True, text=True, check=False)
        built = Path(tmp) / f"{model_name}.mar"
        if res.returncode != 0 or not built.exists():
            raise TestbedError(f"torch-model-archiver failed (rc={res.returncode}): {' '.join(argv)}\n"
                               f"{res.stdout}\n{res.stderr}")
        os.replace(built, out)
    return out


def build_presets(store: Optional[Path] = None) -> Dict[str, Path]:
    return {v: build_archive(v, store=store, **p) for v, p in PRESETS.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("version", nargs="?", help="model version to build (e.g. 4.0)")
    ap.add_argument("--presets", action="store_true", help="build the preset versions " + ", ".join(PRESETS))
    ap.add_argument("--fail-rate", type=float, default=0.0, help="fraction of requests that fail (0..1)")
    ap.add_argument("--delay-ms", type=int, default=0, help="added latency per request (ms)")
    ap.add_argument("--model-name", default=MODEL_NAME)
    ap.add_argument("--store", type=Path, default=MODEL_STORE)
    args = ap.parse_args(argv)
    if not args.presets and not args.version:
        ap.error("give a VERSION or --presets")
    try:
        built = build_presets(args.store) if args.presets else {}
        if args.version:
            built[args.version] = build_archive(args.version, args.fail_rate, args.delay_ms,
                                                args.model_name, args.store)
    except (TestbedError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for version, path in built.items():
        print(f"{version}\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
