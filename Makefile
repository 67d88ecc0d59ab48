# gpuops.cluster — the two commands (see README.md):
#   make lab    set up, bring up the local podman lab and run playbooks/site.yml against it
#   make test   set up and run the whole test suite (what CI runs)
# One tier alone: make lint | unit | integration | molecule | vm
SHELL := /bin/bash
.PHONY: lab lab-down test setup lint unit integration molecule vm cluster sanity build

lab:
	scripts/setup base node-image k8s k8s-mirror cluster-images lab-node-image helm
	scripts/lab up
	scripts/site-lab

lab-down:
	scripts/lab down

test:
	scripts/setup
	scripts/test all

setup:
	scripts/setup

lint:
	scripts/setup base
	scripts/test lint

unit:
	scripts/setup base
	scripts/test unit

integration:
	scripts/setup base k8s openbao torchserve cluster-images helm
	scripts/test integration

molecule:
	scripts/setup base node-image k8s k8s-mirror
	scripts/test molecule

vm:
	scripts/setup base vm-image
	scripts/test vm

cluster:
	scripts/setup base node-image k8s k8s-mirror cluster-images lab-node-image helm
	scripts/test cluster
