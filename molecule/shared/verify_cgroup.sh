#!/bin/sh
# cgroup v2 acceptance checks of pirun (issue 4), run IN the VM AS THE CONTAINER USER from an SSH login session
# (not in a delegated scope already): verify_cgroup.yml pipes it to `ssh USER@VM sh -s`.
# Prints one `name=value` line per measurement (and `#` comment lines); the assertions live in verify_cgroup.yml.
#   PIRUN_RUN   run.py to test (default /opt/pirun/runtime/run.py)
# The container runs the rootfs of the host configuration; its busybox provides dd, sh and timeout.
RUN=${PIRUN_RUN:-/opt/pirun/runtime/run.py}
uid=$(id -u)
mgr=/sys/fs/cgroup/user.slice/user-$uid.slice/user@$uid.service
say() { printf '%s=%s\n' "$1" "$2"; }
note() { printf '# %s\n' "$*"; }
now_ms() { date +%s%3N; }
leaves() { find /sys/fs/cgroup -name 'pirun-*' 2>/dev/null | wc -l; }
units() { systemctl --user list-units --all --no-legend 'pirun-*' 2>/dev/null | wc -l; }
settled_leftovers() {   # systemd removes an emptied scope asynchronously: allow it 5 s
    i=0
    while [ $i -lt 50 ]; do
        [ "$(leaves)" = 0 ] && [ "$(units)" = 0 ] && break
        sleep 0.1; i=$((i + 1))
    done
    say "$1_leaves" "$(leaves)"
    say "$1_units" "$(units)"
    say "$1_settle_ms" "$((i * 100))"
}
procs_of_containers() {  # processes of this user that belong to a container (in a pirun cgroup), or a keeper
    n=0
    for p in /proc/[0-9]*; do
        [ "$(stat -c %u "$p" 2>/dev/null)" = "$uid" ] || continue
        grep -qs 'pirun-' "$p/cgroup" && n=$((n + 1))
    done
    echo $n
}

note "context: $(cat /proc/self/cgroup) XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-unset} kernel=$(uname -r)"
say session_cgroup "$(sed -n 's/^0:://p' /proc/self/cgroup)"
say user_controllers "$(tr ' ' ',' <"$mgr/cgroup.controllers")"

# --- cost of a run (the host configuration sets pids_limit: every run gets a scope) -----------------------
t0=$(now_ms); "$RUN" --net none true; rc=$?; t1=$(now_ms)
say true_rc "$rc"
say true_ms "$((t1 - t0))"
t0=$(now_ms); "$RUN" --net none --memory 64M true; t1=$(now_ms)
say true_memory_ms "$((t1 - t0))"
t0=$(now_ms); python3 -c pass; t1=$(now_ms)
say python_ms "$((t1 - t0))"
say inside_cgroup "$("$RUN" --net none cat /proc/self/cgroup | tr -d '\n')"

# --- memory: OOM past --memory 16M, fine under it ------------------------------------------------------
out=$("$RUN" --net none --memory 16M dd if=/dev/zero of=/dev/null bs=32M count=1 2>&1); rc=$?
note "oom over: $out"
say oom_over_rc "$rc"
say oom_over_line "$(printf '%s\n' "$out" | grep -c 'container killed: out of memory (memory.max=16777216, oom_kill=[1-9]')"
out=$("$RUN" --net none --memory 16M sh -c 'dd if=/dev/zero of=/dev/null bs=32M count=1; exit $?' 2>&1); rc=$?
note "oom over (via sh): $out"
say oom_sh_rc "$rc"
say oom_sh_line "$(printf '%s\n' "$out" | grep -c 'container killed: out of memory')"
out=$("$RUN" --net none --memory 16M dd if=/dev/zero of=/dev/null bs=4M count=4 2>&1); rc=$?
note "oom under: $out"
say oom_under_rc "$rc"
say oom_under_line "$(printf '%s\n' "$out" | grep -c 'out of memory')"
out=$("$RUN" --net none --memory 16M --stats dd if=/dev/zero of=/dev/null bs=8M count=1 2>&1); rc=$?
note "stats: $out"
say stats_rc "$rc"
say stats_memory_peak "$(printf '%s\n' "$out" | sed -n 's/.*memory\.peak=\([0-9]*\).*/\1/p')"

# --- pids: a fork bomb under --pids 64 ------------------------------------------------------------------
lat_file=$(mktemp)
( end=$(( $(date +%s) + 12 )); max=0
  while [ "$(date +%s)" -lt "$end" ]; do
      a=$(now_ms); /bin/true; b=$(now_ms); d=$((b - a)); [ $d -gt $max ] && max=$d
      echo $max >"$lat_file"; sleep 0.2
  done ) &
lat_pid=$!
t0=$(now_ms)
out=$(timeout 60 "$RUN" --net none --pids 64 --stats sh -c \
    'bomb() { bomb | bomb & }; bomb; sleep 5; echo bomb-survivor-pid1' 2>&1); rc=$?
t1=$(now_ms)
wait $lat_pid
note "fork bomb: $(printf '%s\n' "$out" | grep -v "can't fork\|Resource temporarily" | tail -n 3 | tr '\n' ' ')"
say bomb_rc "$rc"
say bomb_ms "$((t1 - t0))"
say bomb_fork_failures "$(printf '%s\n' "$out" | grep -c "can't fork\|Resource temporarily unavailable")"
say bomb_pids_peak "$(printf '%s\n' "$out" | sed -n 's/.*pids\.peak=\([0-9]*\).*/\1/p')"
say bomb_host_latency_max_ms "$(cat "$lat_file")"
rm -f "$lat_file"
sleep 1
say bomb_leftover_procs "$(procs_of_containers)"

# --- cpu: a busy loop under --cpus 0.2, cpu.stat of the leaf over 3 s -------------------------------------
"$RUN" --net none --cpus 0.2 sh -c 'while :; do :; done' &
cpu_run=$!
leaf=
i=0
while [ -z "$leaf" ] && [ $i -lt 100 ]; do
    leaf=$(ls -d "$mgr"/app.slice/pirun-*.scope/container "$mgr"/*/pirun-*.scope/container 2>/dev/null | head -n 1)
    sleep 0.1; i=$((i + 1))
done
sleep 1     # past the start-up
u0=$(sed -n 's/^usage_usec //p' "$leaf/cpu.stat"); t0=$(now_ms)
sleep 3
u1=$(sed -n 's/^usage_usec //p' "$leaf/cpu.stat"); t1=$(now_ms)
say cpu_max "$(cat "$leaf/cpu.max" | tr ' ' '/')"
say cpu_used_usec "$((u1 - u0))"
say cpu_wall_usec "$(( (t1 - t0) * 1000 ))"
say cpu_share_permille "$(( (u1 - u0) * 1000 / ((t1 - t0) * 1000) ))"
kill -TERM $cpu_run
wait $cpu_run
say cpu_term_rc "$?"

# --- cleanup: 20 runs, then kill -9 of run.py and one more run -----------------------------------------
n=0
for i in $(seq 20); do
    "$RUN" --net none --memory 32M --pids 100 true && n=$((n + 1))
done
say runs20_ok "$n"
settled_leftovers runs20

"$RUN" --net none --memory 32M sleep 100 &
victim=$!
i=0
while [ "$(leaves)" = 0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
sleep 1
say kill9_leaves_before "$(leaves)"
kill -KILL $victim
wait $victim 2>/dev/null
"$RUN" --net none --memory 32M true
say kill9_next_rc "$?"
settled_leftovers kill9
say kill9_leftover_procs "$(procs_of_containers)"
say kill9_sleepers "$(pgrep -u "$uid" -f 'sleep 100' | wc -l)"
