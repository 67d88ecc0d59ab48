# -*- coding: utf-8 -*-
# Copyright: contributors to gpuops.cluster
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Mitogen's linear strategy for the lab, without Mitogen's CPU pinning.

Used only by the project's own runs, never by the collection itself (a site runs the stock linear
strategy over SSH): the lab's entry points (scripts/site-lab, tests/cluster/lab.py; docs/lab.md),
the molecule scenarios but os_baseline's and preflight's (.config/molecule/config.yml,
molecule/README.md) and the QEMU tier's storage playbooks (tests/vm/harness.py).

Why Mitogen: a converged site run is ~220 tasks x 6 nodes, and with the stock strategy each
host-task starts a Python on the node that compiles ansible's module_utils from the AnsiballZ zip
again (~0.35 CPU s each on this machine). Mitogen keeps one interpreter per node for the run.

Why not plain `mitogen_linear`: on a machine with fewer than 4 CPUs Mitogen pins its multiplexer
to CPU 0 and every worker and child process (podman exec, hence the node-side interpreter and
everything it runs, kubeadm included) to the remaining CPU. kubeadm's preflight then counts one
CPU ("NumCPU: the number of available CPUs 1 is less than the required 2") and the whole run
shares one core. The base Policy does no pinning.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import ansible_mitogen.affinity

ansible_mitogen.affinity.policy = ansible_mitogen.affinity.Policy()

import ansible_mitogen.loaders  # noqa: E402  (after the policy is replaced)
import ansible_mitogen.strategy  # noqa: E402

Base = ansible_mitogen.loaders.strategy_loader.get('linear', class_only=True)


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, Base):
    """mitogen_linear with no CPU affinity."""
