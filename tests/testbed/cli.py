"""scripts/testbed up|down|status NAME — start the test-bed servers by hand.

Servers keep running after this command exits (each under ``timeout`` with a
bounded lifetime, default 1 h, ``--lifetime`` to change) and are stopped by
PID with ``down``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from tests.testbed.common import RUN_ROOT, stop_from_state

# name -> (module, class, constructor kwargs)
REGISTRY = {
    "prometheus": ("tests.testbed.prometheus", "Prometheus", {}),
    "torchserve": ("tests.testbed.torchserve", "TorchServe", {}),
    "k8s": ("tests.testbed.k8s", "KubeCluster", {}),
    "openbao-dev": ("tests.testbed.openbao", "OpenBao", {"mode": "dev"}),
    "openbao-raft": ("tests.testbed.openbao", "OpenBao", {"mode": "raft"}),
}


def workdir_for(name: str) -> Path:
    return RUN_ROOT / f"cli-{name}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/testbed", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["up", "down", "status", "list"])
    ap.add_argument("name", nargs="?", choices=sorted(REGISTRY))
    ap.add_argument("--lifetime", type=int, default=3600, help="seconds before servers stop themselves")
    args = ap.parse_args(argv)
    if args.action == "list":
        print("\n".join(sorted(REGISTRY)))
        return 0
    if not args.name:
        ap.error("NAME is required")
    wd = workdir_for(args.name)
    if args.action == "down":
        print("stopped" if stop_from_state(wd) else "not running")
        return 0
    if args.action == "status":
        sf = wd / "state.json"
        print(sf.read_text() if sf.exists() else "not running")
        return 0
    if (wd / "state.json").exists():
        print(f"{args.name} already up: scripts/testbed status {args.name}", file=sys.stderr)
        return 1
    mod, cls, kwargs = REGISTRY[args.name]
    factory = getattr(importlib.import_module(mod), cls)
    comp = factory(name=args.name, workdir=wd, lifetime=args.lifetime, **kwargs)
    comp.start()
    print(json.dumps(comp.info, indent=2, default=str))
    print(f"logs and state: {wd}; stop with: scripts/testbed down {args.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
