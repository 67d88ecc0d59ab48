"""Unit tests of plugins/filter/packages.py: what the node roles still hand to apt."""

import subprocess

from plugins.filter.packages import dpkg_held, dpkg_installed, dpkg_missing, dpkg_query_argv

# the shape dpkg-query prints with DPKG_QUERY_FORMAT (Status-Abbrev ends in a space when no error)
OUT = "\n".join([
    "kubeadm\thi \t1.36.3-1.1",
    "kubelet\tii \t1.35.4-1.1",
    "gnupg\trc \t2.2.40-1.1",       # removed, configuration files left
    "runc\tiU \t1.1.5+ds1-1",       # selected, unpacked but not configured
    "chrony\tii \t4.3-2+deb12u1",
    "dpkg-query: no packages found matching kubectl",
])


def test_installed_means_status_letter_i_whatever_the_selection():
    assert dpkg_installed(OUT) == ["kubeadm", "kubelet", "chrony"]


def test_a_name_without_version_is_satisfied_by_any_installed_version():
    assert dpkg_missing(OUT, ["chrony", "kubelet", "gnupg", "runc", "kubectl"]) == ["gnupg", "runc", "kubectl"]


def test_a_pinned_version_is_satisfied_only_by_that_version_with_apt_wildcards():
    wanted = ["kubeadm=1.36.3-*", "kubelet=1.36.3-*", "chrony=4.3-2+deb12u1"]
    assert dpkg_missing(OUT, wanted) == ["kubelet=1.36.3-*"]
    assert dpkg_missing(OUT, ["kubeadm=1.36.3-1.1"]) == []
    assert dpkg_missing(OUT, ["kubeadm=1.36.3-1.2", "kubeadm=1.36.*"]) == ["kubeadm=1.36.3-1.2"]
    # a longer version that merely starts the same is another version
    assert dpkg_missing("kubeadm\tii \t1.36.30-1.1\n", ["kubeadm=1.36.3-*"]) == ["kubeadm=1.36.3-*"]


def test_held_is_the_selection_letter_h():
    assert dpkg_held(OUT) == ["kubeadm"]


def test_nothing_read_means_everything_is_missing():
    assert dpkg_missing("", ["a", "b=1"]) == ["a", "b=1"]
    assert dpkg_missing(None, None) == []
    assert dpkg_installed(None) == [] and dpkg_held("") == []


def test_the_query_prints_what_the_readers_parse():
    argv = dpkg_query_argv(["bash", "no-such-package-gpuops"])
    assert argv[:2] == ["dpkg-query", "--show"] and argv[-2:] == ["bash", "no-such-package-gpuops"]
    assert dpkg_query_argv(None) == argv[:3]
    dpkg = subprocess.run(argv, capture_output=True, text=True, check=False)   # this Debian host's dpkg
    assert dpkg.returncode == 1, dpkg.stderr        # one name unknown to dpkg
    assert dpkg_installed(dpkg.stdout) == ["bash"] and dpkg_held(dpkg.stdout) == []
    assert dpkg_missing(dpkg.stdout, ["bash", "no-such-package-gpuops"]) == ["no-such-package-gpuops"]
