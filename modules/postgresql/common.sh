# Shared by start_prim and stop_prim of the PostgreSQL module (sourced, not run): the settings
# from the module's [env] with their defaults, and how to recognise this module's server.
# POSIX sh; the scripts run as root with the environment of docs/modules.md.

me="${MIRRORKIT_SCRIPT:-${0##*/}}"

say() {
    echo "$me: $*"
}

die() {
    echo "$me: $*" >&2
    exit 1
}

: "${MIRRORKIT_RUN_DIR:?is set by the mirrorkit daemon (see docs/modules.md)}"
: "${MIRRORKIT_MIRROR_DIR:?is set by the mirrorkit daemon (see docs/modules.md)}"

PG_PORT="${PG_PORT:-5432}"
PG_BIN="${PG_BIN:-}"
PG_USER="${PG_USER:-postgres}"
PG_SOCKET_DIR="${PG_SOCKET_DIR-/var/run/postgresql}"
PG_LISTEN="${PG_LISTEN:-}"
PG_CLIENT_NETS="${PG_CLIENT_NETS:-}"
PG_HOST_AUTH="${PG_HOST_AUTH:-scram-sha-256}"
PG_INITDB_OPTIONS="${PG_INITDB_OPTIONS---encoding=UTF8 --locale=C.UTF-8 --data-checksums}"
PG_OPTIONS="${PG_OPTIONS:-}"
PG_START_WAIT_S="${PG_START_WAIT_S:-600}"
PG_STOP_WAIT_S="${PG_STOP_WAIT_S:-120}"

for n in "$PG_PORT" "$PG_START_WAIT_S" "$PG_STOP_WAIT_S"; do
    case "$n" in
    '' | *[!0-9]*) die "PG_PORT, PG_START_WAIT_S and PG_STOP_WAIT_S must be numbers (got \"$n\")" ;;
    esac
done

pg_uid=$(id -u "$PG_USER" 2>/dev/null) ||
    die "no user \"$PG_USER\" on this node: install PostgreSQL (apt-get install postgresql) or set PG_USER"
pg_gid=$(id -g "$PG_USER")

# The replicated directory as the kernel names it (the server's working directory is compared
# with it), and the database cluster, its subdirectory. A mirror that was fenced (its mount
# aborted) cannot be entered any more: then its name as given, which is still the name of the
# working directory of the server processes that stop_prim must find.
mirror=$(cd "$MIRRORKIT_MIRROR_DIR" 2>/dev/null && pwd -P) || mirror="$MIRRORKIT_MIRROR_DIR"
PGDATA="$mirror/pgdata"
pid_file="$MIRRORKIT_RUN_DIR/postgres.pid"
log_file="$MIRRORKIT_RUN_DIR/postgresql.log"

# find_bin: set PG_BIN to the directory of pg_ctl, postgres and initdb ([env] PG_BIN, else the
# newest /usr/lib/postgresql/<version>/bin that has them).
find_bin() {
    if [ -z "$PG_BIN" ]; then
        for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V); do
            if [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ] && [ -x "$d/initdb" ]; then
                PG_BIN="$d"
            fi
        done
        [ -n "$PG_BIN" ] ||
            die "no PostgreSQL server under /usr/lib/postgresql/*/bin: apt-get install postgresql, or set PG_BIN in the module's [env]"
    fi
    for b in pg_ctl postgres initdb; do
        [ -x "$PG_BIN/$b" ] || die "$PG_BIN/$b is missing or not executable (PG_BIN)"
    done
}

# as_pg COMMAND...: run COMMAND as PG_USER (no PAM session: the process stays in the module's
# cgroup, where the daemon finds it).
as_pg() {
    setpriv --reuid="$pg_uid" --regid="$pg_gid" --init-groups -- "$@"
}

# postmaster_pid: the first line of pgdata/postmaster.pid (empty if there is none).
postmaster_pid() {
    head -n 1 "$PGDATA/postmaster.pid" 2>/dev/null || true
}

# is_ours PID: whether PID is a PostgreSQL process of this data directory on this node: every
# server process (postmaster and backends) runs in its data directory. A zombie has no working
# directory, and a PID that a stale pid file names is some other program, or a server of another
# data directory (the distribution's own cluster, another node's in a one-machine test cluster).
is_ours() {
    case "$1" in
    '' | *[!0-9]*) return 1 ;;
    esac
    [ "$(readlink "/proc/$1/cwd" 2>/dev/null)" = "$PGDATA" ] || return 1
    case "$(cat "/proc/$1/comm" 2>/dev/null)" in
    postgres | postmaster) return 0 ;;
    esac
    return 1
}

# our_processes: the PIDs of every PostgreSQL process of this data directory, one per line.
our_processes() {
    for d in /proc/[0-9]*; do
        p="${d#/proc/}"
        if is_ours "$p"; then
            echo "$p"
        fi
    done
}

# kill_ours: SIGKILL every PostgreSQL process of this data directory and wait until none is left
# (5 s); returns 1 if some remain (stuck in the kernel).
kill_ours() {
    n=0
    while :; do
        left=$(our_processes)
        [ -z "$left" ] && return 0
        [ "$n" -ge 50 ] && return 1
        for p in $left; do
            kill -KILL "$p" 2>/dev/null || true
        done
        sleep 0.1
        n=$((n + 1))
    done
}
