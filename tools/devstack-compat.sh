#!/bin/bash
# shellcheck shell=bash
#
# tools/devstack-compat.sh
# A small stand-in for DevStack's function library, so that
# tools/amqp1-standalone can run the plugin's own install, configure and
# start functions on a machine without DevStack (and without systemd or
# sudo). It provides only what the plugin calls, with DevStack's names and
# arguments, plus the two steps stack.sh itself runs for RabbitMQ right
# after "stack pre-install" (install_rpc_backend, restart_rpc_backend).
# It is never sourced in a real DevStack run. The bats tests source it too
# (tests/devstack/stub-devstack.bash) and replace what changes the machine
# with recorders, so that both fakes share one DevStack behaviour.

# Dependencies: bash, coreutils, awk; apt-get or dnf for packages.
#
# Set before sourcing (all optional):
#
# - AMQP1_STANDALONE_DIR  state, configs and logs (/var/lib/amqp1-standalone)
# - AMQP1_PYTHON          the Python to install the driver into (default:
#                         python3 when it accepts pip installs, else a venv
#                         with system site packages in $AMQP1_STANDALONE_DIR)
# - RABBIT_USERID, RABBIT_PASSWORD, SERVICE_HOST  as in DevStack
#
# Functions, in the order the standalone run uses them: define_plugin,
# enable_service, disable_service, is_service_enabled, die, warn,
# echo_summary, is_ubuntu, is_fedora, install_package, is_package_installed,
# uninstall_package, install_rpc_backend, restart_rpc_backend, pip_install,
# setup_develop, iniset, run_process, stop_process, start_service,
# stop_service, restart_service, sudo (only when there is no sudo binary).

# Save trace setting
_XTRACE_DEVSTACK_COMPAT=$(set +o | grep xtrace)
set +o xtrace

AMQP1_STANDALONE_DIR=${AMQP1_STANDALONE_DIR:-/var/lib/amqp1-standalone}
DEST=${DEST:-$AMQP1_STANDALONE_DIR}
DATA_DIR=${DATA_DIR:-$AMQP1_STANDALONE_DIR/data}
LOGDIR=${LOGDIR:-$AMQP1_STANDALONE_DIR/logs}
AMQP1_CONF_DIR=${AMQP1_CONF_DIR:-$AMQP1_STANDALONE_DIR/etc}
STACK_USER=${STACK_USER:-$(whoami)}
SERVICE_HOST=${SERVICE_HOST:-127.0.0.1}
SERVICE_LISTEN_ADDRESS=${SERVICE_LISTEN_ADDRESS:-0.0.0.0}
RABBIT_USERID=${RABBIT_USERID:-stackrabbit}
# A fixed password for this standalone check only (DevStack asks for one)
RABBIT_PASSWORD=${RABBIT_PASSWORD:-amqp1standalone}
RABBIT_HOST=${RABBIT_HOST:-$SERVICE_HOST}
ENABLED_SERVICES=${ENABLED_SERVICES:-rabbit}
DISABLED_SERVICES=${DISABLED_SERVICES:-}
COMPAT_RUN_DIR=$AMQP1_STANDALONE_DIR/run

# os_VENDOR, os_RELEASE, os_PACKAGE as DevStack's GetOSVersion sets them
# (the plugin names the distribution in its messages)
# shellcheck disable=SC2034
os_VENDOR=$(. /etc/os-release 2>/dev/null && echo "${NAME%% *}")
# shellcheck disable=SC2034
os_RELEASE=$(. /etc/os-release 2>/dev/null && echo "${VERSION_ID:-}")
if command -v dpkg >/dev/null 2>&1; then
    os_PACKAGE=deb
elif command -v rpm >/dev/null 2>&1; then
    os_PACKAGE=rpm
else
    os_PACKAGE=""
fi


# Messages
# --------

# Print an error with the caller's line and exit
function die {
    local line=$1
    shift
    echo "[ERROR] ${BASH_SOURCE[1]:-}:$line $*" >&2
    exit 1
}

# Print a warning
function warn {
    local line=$1
    shift
    echo "[WARNING] ${BASH_SOURCE[1]:-}:$line $*" >&2
}

# Print a progress line
function echo_summary {
    echo "==> $*" >&2
}


# Services
# --------

# No-op, as in DevStack
function define_plugin {
    :
}

# Add services $@ to ENABLED_SERVICES
function enable_service {
    local service
    for service in "$@"; do
        [[ ,$DISABLED_SERVICES, == *,$service,* ]] && continue
        is_service_enabled "$service" || ENABLED_SERVICES+=",$service"
    done
    ENABLED_SERVICES=${ENABLED_SERVICES#,}
}

# Remove services $@ from ENABLED_SERVICES
function disable_service {
    local service list
    for service in "$@"; do
        list=",$ENABLED_SERVICES,"
        list=${list//,$service,/,}
        list=${list#,}
        ENABLED_SERVICES=${list%,}
        DISABLED_SERVICES+=",$service"
    done
    DISABLED_SERVICES=${DISABLED_SERVICES#,}
}

# Succeed when one of services $@ is enabled
function is_service_enabled {
    local service
    for service in "$@"; do
        [[ ,$ENABLED_SERVICES, == *,$service,* ]] && return 0
    done
    return 1
}


# Distribution and packages
# -------------------------

# Succeed on every deb distribution (Debian too, as in DevStack)
function is_ubuntu {
    [[ $os_PACKAGE == deb ]]
}

# Succeed on every RPM distribution of the RHEL family
function is_fedora {
    [[ $os_PACKAGE == rpm ]]
}

# Succeed when packages $@ are installed
function is_package_installed {
    [[ $# -gt 0 ]] || return 1
    if is_ubuntu; then
        dpkg -s "$@" >/dev/null 2>&1
    else
        rpm --quiet -q "$@"
    fi
}

# Install packages $@ (apt-get update first, once)
function install_package {
    if is_ubuntu; then
        if [[ -z ${_COMPAT_APT_UPDATED:-} ]]; then
            sudo apt-get update -qq
            _COMPAT_APT_UPDATED=1
        fi
        sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
    elif is_fedora; then
        sudo dnf install -y -q "$@"
    else
        die $LINENO "no package manager known for $os_VENDOR"
    fi
}

# Remove packages $@
function uninstall_package {
    if is_ubuntu; then
        sudo env DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq "$@"
    else
        sudo dnf remove -y -q "$@" || true
    fi
}


# System services (without systemd when it is not running)
# --------------------------------------------------------

# Succeed when systemd is the init system
function _compat_have_systemd {
    [[ -d /run/systemd/system ]]
}

# Print the pid file of the local RabbitMQ node
function _compat_rabbit_pidfile {
    echo "/var/lib/rabbitmq/mnesia/rabbit@$(hostname -s).pid"
}

# Close every file descriptor above 2 of this shell, so that a daemon it
# starts next holds no pipe of its caller (a caller's reader would wait)
function _compat_close_fds {
    local fd
    for fd in /proc/self/fd/*; do
        fd=${fd##*/}
        if [[ $fd -gt 2 ]]; then
            eval "exec $fd>&-" 2>/dev/null || true
        fi
    done
}

# Start the local RabbitMQ node the way its systemd unit would: as user
# rabbitmq without a PAM session (su's pam_limits cuts open files to 1024,
# and a node with more queues than that hangs recovering them), with up to
# 65536 open files (the unit's LimitNOFILE), then wait for it, bounded
function _compat_start_rabbitmq {
    local wait=${AMQP1_START_TIMEOUT:-120}
    # shellcheck disable=SC2016
    (
        _compat_close_fds
        sudo env HOME=/var/lib/rabbitmq bash -c \
            'ulimit -S -n 65536 2>/dev/null || ulimit -S -n "$(ulimit -H -n)"
            cd /var/lib/rabbitmq && exec setpriv --reuid=rabbitmq \
                --regid=rabbitmq --init-groups rabbitmq-server -detached'
    )
    if ! sudo timeout $((wait + 30)) rabbitmqctl wait --timeout "$wait" \
            "$(_compat_rabbit_pidfile)" >/dev/null; then
        die $LINENO "RabbitMQ did not start within ${wait}s: see" \
            "/var/log/rabbitmq (startup_err and rabbit@$(hostname -s).log)"
    fi
}

# Start system service $1
function start_service {
    local service=$1
    if _compat_have_systemd; then
        sudo systemctl start "$service"
    elif [[ $service == rabbitmq-server ]]; then
        _compat_start_rabbitmq
    elif command -v service >/dev/null 2>&1; then
        sudo service "$service" start
    else
        die $LINENO "cannot start $service without systemd"
    fi
}

# Stop system service $1
function stop_service {
    local service=$1
    if _compat_have_systemd; then
        sudo systemctl stop "$service"
    elif [[ $service == rabbitmq-server ]]; then
        sudo rabbitmqctl stop "$(_compat_rabbit_pidfile)"
    elif command -v service >/dev/null 2>&1; then
        sudo service "$service" stop
    else
        return 1
    fi
}

# Restart system service $1
function restart_service {
    local service=$1
    if _compat_have_systemd; then
        sudo systemctl restart "$service"
    else
        stop_service "$service" >/dev/null 2>&1 || true
        start_service "$service"
    fi
}


# Processes (DevStack runs them as devstack@ units; here in the background)
# -------------------------------------------------------------------------

# Run command $2 as service $1 in the background, output in $LOGDIR
function run_process {
    local service=$1
    local command=$2
    is_service_enabled "$service" || return 0
    mkdir -p "$COMPAT_RUN_DIR" "$LOGDIR"
    stop_process "$service"
    # shellcheck disable=SC2086
    (
        _compat_close_fds
        exec setsid nohup $command >"$LOGDIR/$service.out" 2>&1 < /dev/null
    ) &
    echo $! > "$COMPAT_RUN_DIR/$service.pid"
}

# Stop the process of service $1 started by run_process
function stop_process {
    local service=$1
    local pidfile=$COMPAT_RUN_DIR/$service.pid
    [[ -r $pidfile ]] || return 0
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
}


# RabbitMQ as stack.sh prepares it (lib/rpc_backend)
# -------------------------------------------------

# Install rabbitmq-server when the rabbit service is enabled
function install_rpc_backend {
    if is_service_enabled rabbit && ! is_package_installed rabbitmq-server; then
        install_package rabbitmq-server
    fi
}

# Start RabbitMQ and create RABBIT_USERID (the guest user is left alone)
function restart_rpc_backend {
    is_service_enabled rabbit || return 0
    if ! sudo rabbitmqctl -q status >/dev/null 2>&1; then
        echo_summary "Starting RabbitMQ"
        start_service rabbitmq-server
    fi
    if sudo rabbitmqctl -q list_users | awk '{print $1}' | grep -qxF -- "$RABBIT_USERID"; then
        sudo rabbitmqctl change_password "$RABBIT_USERID" "$RABBIT_PASSWORD" >/dev/null
    else
        sudo rabbitmqctl add_user "$RABBIT_USERID" "$RABBIT_PASSWORD" >/dev/null
    fi
    sudo rabbitmqctl set_permissions -p / "$RABBIT_USERID" ".*" ".*" ".*" >/dev/null
}


# Python
# ------

# Print the Python to install into (see AMQP1_PYTHON above)
function _compat_python {
    local venv=$AMQP1_STANDALONE_DIR/venv
    if [[ -n ${AMQP1_PYTHON:-} ]]; then
        echo "$AMQP1_PYTHON"
    elif [[ -x $venv/bin/python ]]; then
        echo "$venv/bin/python"
    elif python3 -m pip --version >/dev/null 2>&1 && \
        ! python3 -c 'import sys, sysconfig, os; sys.exit(os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
        command -v python3
    else
        if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
            install_package python3-venv python3-pip >&2
        fi
        python3 -m venv --system-site-packages "$venv" >&2
        echo "$venv/bin/python"
    fi
}

# pip install $@ into the chosen Python
function pip_install {
    local python
    python=$(_compat_python)
    AMQP1_PYTHON=$python
    "$python" -m pip install -q "$@"
}

# pip install -e project directory $1 (pbr needs a version without commits)
function setup_develop {
    local dir=$1
    if ! git -C "$dir" rev-parse -q --verify HEAD >/dev/null 2>&1; then
        PBR_VERSION=${PBR_VERSION:-0.0.1.dev0} pip_install -e "$dir"
    else
        pip_install -e "$dir"
    fi
}


# INI files
# ---------

# iniset [-sudo] FILE SECTION OPTION VALUE: set OPTION in [SECTION],
# creating both when missing
function iniset {
    local use_sudo=""
    if [[ $1 == -sudo ]]; then
        use_sudo=sudo
        shift
    fi
    local file=$1
    local section=$2
    local option=$3
    local value=$4
    local tmp
    [[ -n $file && -n $section && -n $option ]] || die $LINENO "iniset: usage: iniset FILE SECTION OPTION VALUE"
    tmp=$(mktemp)
    [[ -e $file ]] && $use_sudo cat "$file" > "$tmp"
    S=$section O=$option V=$value awk '
        function put() { print ENVIRON["O"] " = " ENVIRON["V"]; done = 1 }
        function blanks() { for (; pending > 0; pending--) print "" }
        /^[ \t]*$/ && inside && !done { pending++; next }
        /^[ \t]*\[.*\][ \t]*$/ {
            if (inside && !done) put()
            blanks()
            name = $0; gsub(/^[ \t]*\[|\][ \t]*$/, "", name)
            inside = (name == ENVIRON["S"]); if (inside) seen = 1
            print; next
        }
        { blanks() }
        inside && !done {
            key = $0; sub(/[ \t]*=.*/, "", key); gsub(/^[ \t]+/, "", key)
            if ($0 ~ /=/ && key == ENVIRON["O"]) { put(); next }
        }
        { print }
        END {
            if (!done) {
                if (!seen) { if (NR > 0) print ""; print "[" ENVIRON["S"] "]" }
                put()
            }
            blanks()
        }' "$tmp" | $use_sudo tee "$file" >/dev/null
    rm -f "$tmp"
}


# sudo
# ----

# Run the command itself when root has no sudo binary (these machines)
if ! command -v sudo >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
    function sudo {
        [[ ${1:-} == -E ]] && shift
        "$@"
    }
fi

# Restore xtrace
$_XTRACE_DEVSTACK_COMPAT
