"""sysctl_conf core: file rendering, key paths, what is applied and what only persisted."""

import os

import pytest

from ansible_collections.gpuops.cluster.plugins.module_utils import sysctl_conf as core


@pytest.fixture
def proc(tmp_path):
    root = tmp_path / "sys"

    def put(name, value, writable=True):
        path = core.key_path(str(root), name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(value + "\n")
        os.chmod(path, 0o644 if writable else 0o444)
        return path
    put.root = str(root)
    return put


def test_key_path_swaps_dots_and_slashes_like_sysctl():
    assert core.key_path("/p", "net.ipv4.ip_forward") == "/p/net/ipv4/ip_forward"
    assert core.key_path("/p", "net.ipv4.conf.eth0/100.rp_filter") == "/p/net/ipv4/conf/eth0.100/rp_filter"


def test_render_sorts_drops_null_and_normalises_whitespace():
    text = core.render({"vm.b": 2, "net.a": "4096\t87380  6291456", "x.gone": None})
    assert text.splitlines()[1:] == ["net.a = 4096 87380 6291456", "vm.b = 2"]
    assert text.startswith("# Managed by gpuops.cluster")


@pytest.mark.parametrize("settings,needle", [
    ({"bad name": 1}, "invalid sysctl name"),
    ({"net..x": 1}, "invalid sysctl name"),
    ({"net.x": True}, "boolean is ambiguous"),
    ({"net.x": [1]}, "must be a string or a number"),
    ({"net.x": "a\nb"}, "multi-line"),
    ({"net.x": "  "}, "empty"),
])
def test_validate_names_each_problem(settings, needle):
    problems = core.validate(settings)
    assert len(problems) == 1 and needle in problems[0], problems


def test_validate_accepts_numbers_strings_and_null():
    assert core.validate({"net.ipv4.ip_forward": 1, "net.ipv4.ip_local_port_range": "1024 65535", "vm.x": None}) == []


def test_plan_applies_only_what_differs_and_reports_missing(proc):
    proc("net.ipv4.ip_forward", "0")
    proc("vm.max_map_count", "262144")
    proc("net.ipv4.ip_local_port_range", "32768\t60999")
    plan = core.plan({"net.ipv4.ip_forward": 1, "vm.max_map_count": 262144, "net.nope": 1,
                      "net.ipv4.ip_local_port_range": "32768 60999", "vm.dropped": None}, proc_root=proc.root)
    assert plan["apply"] == {"net.ipv4.ip_forward": ("0", "1")}
    assert sorted(plan["in_sync"]) == ["net.ipv4.ip_local_port_range", "vm.max_map_count"]
    assert plan["missing"] == ["net.nope"]


def test_plan_pattern_and_writability_narrow_what_is_applied(proc):
    proc("net.core.somaxconn", "128")
    proc("vm.swappiness", "60")
    readonly = proc("net.core.rmem_max", "1", writable=False)
    # root may write a 0444 file; what counts is what the kernel lets us write (a read-only /proc/sys mount)
    plan = core.plan({"net.core.somaxconn": 4096, "vm.swappiness": 1, "net.core.rmem_max": 5},
                     proc_root=proc.root, apply_pattern=r"^net\.", apply_only_writable=True,
                     writable=lambda path: path != readonly)
    assert plan["apply"] == {"net.core.somaxconn": ("128", "4096")}
    assert "does not match" in plan["not_applied"]["vm.swappiness"]
    assert plan["not_applied"]["net.core.rmem_max"] == "not writable here"
    # without the writability filter it would be applied
    assert "net.core.rmem_max" in core.plan({"net.core.rmem_max": 5}, proc_root=proc.root)["apply"]


def test_apply_values_writes_and_reports_refusals(proc, tmp_path):
    path = proc("net.core.somaxconn", "128")
    errors = core.apply_values({"net.core.somaxconn": ("128", "4096"), "net.gone.x": ("", "1")}, proc_root=proc.root)
    assert open(path).read().strip() == "4096"
    assert list(errors) == ["net.gone.x"]


def test_write_atomic_replaces_the_file(tmp_path):
    target = tmp_path / "90-x.conf"
    target.write_text("old\n")
    core.write_atomic(str(target), "new\n")
    assert target.read_text() == "new\n" and oct(target.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == ["90-x.conf"]
