#!/usr/bin/env bash
# Benchmark: how Ansible reaches a podman systemd node, side by side in one run on the same node:
#   containers.podman.podman   (molecule-plugins' podman driver default: podman exec per command)
#   community.docker.nsenter   (the stock-strategy connection of .config/molecule/config.yml: nsenter
#                              into the node's namespaces, one Python per task)
#   Mitogen over podman        (the default of .config/molecule/config.yml: the lab's
#                              gpuops_mitogen_linear strategy, one Python per node and run)
# Runs the same playbook (N stat tasks + one apt-cache policy command) ROUNDS times with each
# connection, alternating, and prints each wall time and the ratio. No assert: numbers only.
#
#   scripts/bench/molecule_connection.sh [TASKS] [ROUNDS]     (defaults 10 and 2)
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "$0")/../env.sh"
TASKS="${1:-10}"; ROUNDS="${2:-2}"
export CONTAINERS_CONF="$GPUOPS_REPO/molecule/containers.conf"
NODE="bench-conn-$$"
WORK="$(mktemp -d)"
cleanup() { podman rm -f -t 5 "$NODE" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

bash "$GPUOPS_REPO/scripts/build/node-image.sh" >/dev/null
podman run -d --name "$NODE" --systemd=always --timeout 600 localhost/gpuops-node:bookworm /sbin/init >/dev/null
for _ in $(seq 60); do
  case "$(podman exec "$NODE" systemctl is-system-running 2>/dev/null || true)" in running|degraded) break ;; esac
  sleep 1
done
pid="$(podman inspect --format '{{.State.Pid}}' "$NODE")"

cat > "$WORK/play.yml" <<EOF
- name: Connection benchmark
  hosts: all
  gather_facts: false
  tasks:
    - name: Stat a file
      ansible.builtin.stat:
        path: /etc/hostname
      loop: "{{ range($TASKS) | list }}"
    - name: Run a command
      ansible.builtin.command: apt-cache policy systemd
      changed_when: false
EOF

run() {
  local t0 t1
  t0=$(date +%s%N)
  ansible-playbook -i "$NODE," "$@" "$WORK/play.yml" > "$WORK/out.log" 2>&1 \
    || { cat "$WORK/out.log" >&2; exit 1; }
  t1=$(date +%s%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'
}

echo "node $NODE (pid $pid), $((TASKS + 1)) tasks per run, $ROUNDS rounds, load: $(cut -d' ' -f1-3 /proc/loadavg)"
mitogen() {
  ANSIBLE_STRATEGY_PLUGINS="$GPUOPS_REPO/scripts/lab-ansible/strategy_plugins" ANSIBLE_STRATEGY=gpuops_mitogen_linear \
    run -c podman -e ansible_python_interpreter=/usr/bin/python3
}
tp=0; tn=0; tm=0
for r in $(seq "$ROUNDS"); do
  a=$(run -c containers.podman.podman)
  b=$(run -c community.docker.nsenter -e "ansible_nsenter_pid=$pid")
  c=$(mitogen)
  printf 'round %s: podman exec %6.1f s   nsenter %6.1f s   mitogen %6.1f s\n' "$r" "$a" "$b" "$c"
  tp=$(awk -v x="$tp" -v y="$a" 'BEGIN { print x + y }'); tn=$(awk -v x="$tn" -v y="$b" 'BEGIN { print x + y }')
  tm=$(awk -v x="$tm" -v y="$c" 'BEGIN { print x + y }')
done
printf 'total: podman exec %.1f s, nsenter %.1f s, mitogen %.1f s; podman exec/nsenter %.2fx, nsenter/mitogen %.2fx\n' \
  "$tp" "$tn" "$tm" "$(awk -v x="$tp" -v y="$tn" 'BEGIN { print x / y }')" "$(awk -v x="$tn" -v y="$tm" 'BEGIN { print x / y }')"
