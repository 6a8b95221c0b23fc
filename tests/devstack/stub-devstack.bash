#!/bin/bash
# shellcheck shell=bash
# The stand-ins replace commands the plugin runs through sudo on purpose:
# shellcheck disable=SC2032
#
# tests/devstack/stub-devstack.bash
# Stand-ins for the DevStack functions and system commands the plugin calls,
# for the bats tests in this directory. Each stand-in appends one line,
# "name args...", to $STUB_LOG instead of changing the machine; sudo runs
# its command (so file writes land in the test's temporary directory).
#
# Set before sourcing: BATS_TEST_TMPDIR (bats does).
#
# Knobs the tests set before stub_load_plugin:
#
# - STUB_APT_PACKAGES   packages apt-cache "offers"
# - STUB_INSTALLED      packages dpkg "has"
# - STUB_RABBIT_VERSION what rabbitmqctl version prints (3.10.8)
# - STUB_RABBIT_USERS   users rabbitmqctl list_users prints
# - STUB_RABBIT_PLUGINS plugins rabbitmq-plugins list -e -m prints
# - STUB_LISTENERS      "PORT NAME PID ..." triples: what ss -ltnp shows
# - STUB_PYTHON_RC      exit status of DevStack's Python (AMQP1_PYTHON, a
#                       stand-in that records its arguments) when it runs a
#                       script, e.g. tools/bus-check (0)
# - STUB_OSLO_MESSAGING oslo.messaging version that Python reports ("" is
#                       none installed)
#
# Entry points: stub_setup (from setup), stub_load_plugin MODE,
# stub_fake_binary NAME, stub_calls PATTERN, stub_phase ARGS...

PLUGIN_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# Prepare a fresh DevStack-like environment in the test's directory
function stub_setup {
    STUB_DIR=$BATS_TEST_TMPDIR
    STUB_LOG=$STUB_DIR/calls.log
    : > "$STUB_LOG"
    mkdir -p "$STUB_DIR/bin"
    PATH=$STUB_DIR/bin:/usr/bin:/bin
    DEST=$STUB_DIR/opt/stack
    DATA_DIR=$DEST/data
    LOGDIR=$DEST/logs
    AMQP1_CONF_DIR=$STUB_DIR/etc/amqp1
    AMQP1_RABBITMQ_CONF_DIR=$STUB_DIR/etc/rabbitmq
    AMQP1_RABBITMQ_USER=$(whoami)
    STACK_USER=$(whoami)
    SERVICE_HOST=192.0.2.10
    HOST_IP=$SERVICE_HOST
    SERVICE_LISTEN_ADDRESS=0.0.0.0
    RABBIT_USERID=stackrabbit
    RABBIT_PASSWORD=rabbitpw
    RABBIT_HOST=$SERVICE_HOST
    ENABLED_SERVICES=rabbit,key,n-api,n-cond,n-cpu,g-api,c-api,s-proxy
    DISABLED_SERVICES=""
    os_VENDOR=Debian
    os_RELEASE=12
    os_PACKAGE=deb
    STUB_APT_PACKAGES=""
    STUB_INSTALLED=""
    STUB_RABBIT_VERSION=3.10.8
    STUB_RABBIT_USERS="guest"
    STUB_RABBIT_PLUGINS=""
    STUB_LISTENERS=""
    export STUB_PYTHON_RC=0 STUB_OSLO_MESSAGING="" STUB_LOG
    REQUIREMENTS_DIR=$DEST/requirements
    _stub_python > /dev/null
    unset AMQP1_SERVICE AMQP1_HOST AMQP1_USERNAME AMQP1_PASSWORD \
        AMQP1_DEFAULT_PORT AMQP1_NOTIFY_PORT AMQP1_RPC_TRANSPORT_URL \
        AMQP1_NOTIFY_TRANSPORT_URL AMQP1_ROUTER AMQP1_QDROUTERD_BIN \
        AMQP1_SKROUTERD_BIN AMQP1_QPIDD_BIN AMQP1_DRIVER_OPTS AMQP1_DIR \
        AMQP1_BUS_CHECK AMQP1_BUS_CHECK_TIMEOUT AMQP1_ANONYMOUS AMQP1_ROLE \
        AMQP1_SSL AMQP1_SSL_PORT AMQP1_SSL_CERT_FILE AMQP1_SSL_KEY_FILE \
        AMQP1_SSL_CA_FILE INT_CA_DIR AMQP1_ROUTER_PEERS AMQP1_ROUTER_INTER_PORT \
        AMQP1_ROUTER_ADDRESS AMQP1_ROUTER_ID
    AMQP1_PYTHON=$STUB_DIR/bin/python3
}

# Write the stand-in of DevStack's Python: "-c CODE" prints
# STUB_OSLO_MESSAGING (fails when empty), a script run is recorded as
# "python SCRIPT ARGS..." (and "stdin LINE" when an argument is "-") and
# exits STUB_PYTHON_RC
function _stub_python {
    local path=$STUB_DIR/bin/python3
    cat > "$path" <<'PY'
#!/bin/bash
if [[ $1 == -c ]]; then
    [[ -n $STUB_OSLO_MESSAGING ]] || exit 1
    echo "$STUB_OSLO_MESSAGING"
    exit 0
fi
echo "python $*" >> "$STUB_LOG"
if [[ " $* " == *" - "* ]]; then
    echo "stdin $(cat)" >> "$STUB_LOG"
fi
exit "$STUB_PYTHON_RC"
PY
    chmod 0755 "$path"
}

# Source the plugin's settings and libraries for mode $1 (empty: default)
function stub_load_plugin {
    if [[ -n ${1:-} ]]; then
        AMQP1_SERVICE=$1
    fi
    # shellcheck source=devstack/settings
    source "$PLUGIN_DIR/devstack/settings"
    # shellcheck source=devstack/plugin.sh
    source "$PLUGIN_DIR/devstack/plugin.sh"
}

# Run plugin.sh with phase arguments $@
function stub_phase {
    # shellcheck source=devstack/plugin.sh
    source "$PLUGIN_DIR/devstack/plugin.sh" "$@"
}

# Create an executable named $1 in the test's PATH; print its path
function stub_fake_binary {
    local path=$STUB_DIR/bin/$1
    printf '#!/bin/sh\nexit 0\n' > "$path"
    chmod 0755 "$path"
    echo "$path"
}

# Print the recorded calls matching extended regular expression $1
function stub_calls {
    grep -E -- "$1" "$STUB_LOG" || true
}

# Append "$*" to the call log
function _stub_record {
    echo "$*" >> "$STUB_LOG"
}


# DevStack functions
# ------------------

# One fake DevStack for the standalone and these tests: the bookkeeping
# (services, distribution, die) comes from tools/devstack-compat.sh as is;
# what would change the machine is replaced below by a recorder.
# shellcheck source=tools/devstack-compat.sh
source "$PLUGIN_DIR/tools/devstack-compat.sh"

function define_plugin {
    _stub_record define_plugin "$@"
}
function echo_summary {
    :
}
function warn {
    _stub_record warn "$@"
}
function iniset {
    _stub_record iniset "$@"
}
function install_package {
    _stub_record install_package "$@"
    STUB_INSTALLED+=" $*"
}
function uninstall_package {
    _stub_record uninstall_package "$@"
}
function is_package_installed {
    [[ " $STUB_INSTALLED " == *" $1 "* ]]
}
function pip_install {
    _stub_record pip_install "$@"
}
function setup_develop {
    _stub_record setup_develop "$@"
}
function run_process {
    _stub_record run_process "$@"
}
function stop_process {
    _stub_record stop_process "$@"
}
function start_service {
    _stub_record start_service "$@"
}
function stop_service {
    _stub_record stop_service "$@"
}
function restart_service {
    _stub_record restart_service "$@"
}
function install_rpc_backend {
    _stub_record install_rpc_backend "$@"
}
function restart_rpc_backend {
    _stub_record restart_rpc_backend "$@"
}


# System commands
# ---------------

function sudo {
    "$@"
}
function apt-cache {
    _stub_record apt-cache "$@"
    local package=${*: -1}
    [[ " $STUB_APT_PACKAGES " == *" $package "* ]]
}
function dnf {
    _stub_record dnf "$@"; return 1
}
function saslpasswd2 {
    local db="" arg password
    read -r password
    _stub_record saslpasswd2 "$@" "(password: $password)"
    while [[ $# -gt 0 ]]; do
        arg=$1
        shift
        [[ $arg == -f ]] && db=$1
    done
    [[ -n $db ]] && echo "sasldb" > "$db"
}
function rabbitmqctl {
    _stub_record rabbitmqctl "$@"
    case "$*" in
        "-q version") echo "$STUB_RABBIT_VERSION" ;;
        "-q list_users")
            printf 'user\ttags\n'
            # shellcheck disable=SC2086
            printf '%s\t[]\n' $STUB_RABBIT_USERS
            ;;
    esac
}
function rabbitmq-plugins {
    _stub_record rabbitmq-plugins "$@"
    if [[ $* == *list* ]]; then
        # shellcheck disable=SC2086
        printf '%s\n' $STUB_RABBIT_PLUGINS
    fi
}
# ss -H -ltnp "sport = :PORT": one line per STUB_LISTENERS entry on PORT
function ss {
    local filter=${*: -1}
    local port=${filter##*:}
    # shellcheck disable=SC2086
    set -- $STUB_LISTENERS
    while [[ $# -ge 3 ]]; do
        if [[ $1 == "$port" ]]; then
            printf 'LISTEN 0 128 0.0.0.0:%s 0.0.0.0:* users:(("%s",pid=%s,fd=3))\n' "$1" "$2" "$3"
        fi
        shift 3
    done
}
function hostname {
    echo testhost
}
# The port probe of amqp1_wait_for_port: "timeout 2 bash -c ... HOST PORT"
function timeout {
    if [[ ${2:-} == bash && ${4:-} == *"/dev/tcp/"* ]]; then
        _stub_record port-probe "${*: -2}"
    else
        command timeout "$@"
    fi
}
