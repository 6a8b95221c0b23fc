#!/usr/bin/env bats
#
# tests/devstack/real-devstack.bats
# The plugin under DevStack's own function library (not the stub): its
# plugin machinery (enable_plugin, run_phase), iniset and lib/rpc_backend,
# whose functions the plugin overrides. Needs a DevStack checkout:
# AMQP1_TEST_DEVSTACK=/path/to/devstack (the directory with "functions");
# skipped without one (CI has no network to clone it).

REPO_DIR=$(cd "$(dirname "$BATS_TEST_FILENAME")/../.." && pwd)

setup() {
    if [[ ! -r ${AMQP1_TEST_DEVSTACK:-}/functions ]]; then
        skip "AMQP1_TEST_DEVSTACK is not a DevStack checkout"
    fi
    TOP_DIR=$AMQP1_TEST_DEVSTACK
    DEST=$BATS_TEST_TMPDIR/opt/stack
    DATA_DIR=$DEST/data
    LOGDIR=$DEST/logs
    mkdir -p "$DEST" "$LOGDIR"
    # shellcheck source=/dev/null
    source "$TOP_DIR/functions"
    SERVICE_HOST=192.0.2.10
    HOST_IP=192.0.2.10
    RABBIT_PASSWORD=rabbitpw
    ENABLED_SERVICES=rabbit,key,n-api,n-cpu
    # shellcheck source=/dev/null
    source "$TOP_DIR/lib/rpc_backend"
    unset AMQP1_SERVICE AMQP1_DIR AMQP1_ROLE
    AMQP1_CONF_DIR=$BATS_TEST_TMPDIR/etc/amqp1
}

# enable_plugin NAME and check the repository out as Zuul would, at
# $DEST/$2 (defaults to NAME), then load the settings as stack.sh does
load_as() {
    local name=$1
    local checkout=${2:-$1}
    ln -s "$REPO_DIR" "$DEST/$checkout"
    enable_plugin "$name" https://opendev.org/openstack/devstack-plugin-amqp1
    run_phase source >/dev/null
}

@test "real DevStack: enable_plugin under the repository's name, checkout found" {
    load_as devstack-plugin-amqp1
    [ "$AMQP1_DIR" = "$DEST/devstack-plugin-amqp1" ]
    is_service_enabled amqp1
    [ "$(get_transport_url)" = "amqp://stackrabbit:rabbitpw@192.0.2.10:5672/" ]
}

@test "real DevStack: enable_plugin amqp1 (the seed guide's name) works too" {
    load_as amqp1
    [ "$AMQP1_DIR" = "$DEST/amqp1" ]
    [ "$(get_notification_url)" = "amqp://stackrabbit:rabbitpw@192.0.2.10:5672/" ]
}

@test "real DevStack: iniset_rpc_backend writes the services' files with its iniset" {
    AMQP1_SERVICE=qpid-dual
    AMQP1_QDROUTERD_BIN=/bin/true
    AMQP1_QPIDD_BIN=/bin/true
    load_as devstack-plugin-amqp1
    local conf=$BATS_TEST_TMPDIR/nova.conf
    iniset_rpc_backend nova "$conf"
    [ "$(iniget "$conf" DEFAULT transport_url)" = "amqp://stackrabbit:rabbitpw@192.0.2.10:5672/" ]
    [ "$(iniget "$conf" oslo_messaging_notifications transport_url)" = "amqp://stackrabbit:rabbitpw@192.0.2.10:45672/" ]
    # the mode took DevStack's rabbit service away
    ! is_service_enabled rabbit
}

@test "real DevStack: a subnode is a client and passes pre-install without rabbit" {
    HOST_IP=192.0.2.20
    ENABLED_SERVICES=n-cpu
    load_as devstack-plugin-amqp1
    [ "$AMQP1_ROLE" = client ]
    run run_phase stack pre-install
    [ "$status" -eq 0 ]
}

@test "real DevStack: a bad mode dies through DevStack's die with the way out" {
    AMQP1_SERVICE=qpidx
    load_as devstack-plugin-amqp1
    run run_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"AMQP1_SERVICE='qpidx' is not a mode: set AMQP1_SERVICE to one of"* ]]
}
