"""Summarise `containerd config dump` (TOML on stdin) as JSON for the molecule verify play.

Parses the real TOML (tomllib) instead of matching text, so the check is independent of the
regular expressions the role itself uses. Handles config version 2 (containerd 1.x) and 3 (2.x).
"""
import json
import sys
import tomllib

cfg = tomllib.loads(sys.stdin.read())
plugins = cfg.get("plugins", {})
if "io.containerd.cri.v1.runtime" in plugins:  # containerd 2.x
    runtime = plugins["io.containerd.cri.v1.runtime"]
    images = plugins.get("io.containerd.cri.v1.images", {})
    sandbox = images.get("pinned_images", {}).get("sandbox")
    config_path = images.get("registry", {}).get("config_path")
else:  # containerd 1.x
    runtime = plugins.get("io.containerd.grpc.v1.cri", {})
    sandbox = runtime.get("sandbox_image")
    config_path = runtime.get("registry", {}).get("config_path")
ctrd = runtime.get("containerd", {})
runtimes = ctrd.get("runtimes", {})
out = {
    "version": cfg.get("version"),
    "imports": cfg.get("imports", []),
    "default_runtime_name": ctrd.get("default_runtime_name"),
    "runtimes": sorted(runtimes),
    "runc_systemd_cgroup": runtimes.get("runc", {}).get("options", {}).get("SystemdCgroup"),
    "nvidia_binary": runtimes.get("nvidia", {}).get("options", {}).get("BinaryName"),
    "nvidia_systemd_cgroup": runtimes.get("nvidia", {}).get("options", {}).get("SystemdCgroup"),
    "sandbox_image": sandbox,
    "config_path": config_path,
    "gc_pause_threshold": plugins.get("io.containerd.gc.v1.scheduler", {}).get("pause_threshold"),
}
json.dump(out, sys.stdout)
