#!/usr/bin/env bats
#
# tests/devstack/multinode.bats
# A multinode DevStack: the controller runs the bus, a subnode (client
# role) runs no daemon and points its services at the controller's bus.
# The variables are the ones DevStack's multinode jobs set on a subnode.

load stub-devstack

setup() {
    stub_setup
}

# Make this host a DevStack subnode of controller 192.0.2.10
as_subnode() {
    HOST_IP=192.0.2.20
    SERVICE_HOST=192.0.2.10
    RABBIT_HOST=192.0.2.10
    ENABLED_SERVICES=n-cpu,q-agt,placement-client
}

@test "role: server on an all-in-one and on the controller, client on a subnode" {
    stub_load_plugin rabbit
    [ "$AMQP1_ROLE" = server ]
    unset HOST_IP
    AMQP1_ROLE=""
    stub_load_plugin rabbit
    [ "$AMQP1_ROLE" = server ]
    as_subnode
    AMQP1_ROLE=""
    stub_load_plugin rabbit
    [ "$AMQP1_ROLE" = client ]
}

@test "role: a host with DevStack's rabbit service enabled stays a server" {
    as_subnode
    ENABLED_SERVICES+=,rabbit
    stub_load_plugin rabbit
    [ "$AMQP1_ROLE" = server ]
}

@test "subnode, every mode: URLs point at the controller, no daemon enabled" {
    local mode
    for mode in rabbit qpid qpid-dual qpid-hybrid; do
        stub_setup
        as_subnode
        stub_load_plugin "$mode"
        [ "$AMQP1_ROLE" = client ]
        [[ $(get_transport_url) == amqp://*@192.0.2.10:* ]]
        [[ $(get_notification_url) == *@192.0.2.10:* ]]
        ! is_service_enabled amqp1-router
        ! is_service_enabled amqp1-qpidd
        [ -z "$(amqp1_daemons)" ]
    done
}

@test "subnode, qpid-dual: RPC to the controller's router, notifications to its qpidd" {
    as_subnode
    stub_load_plugin qpid-dual
    [ "$(get_transport_url)" = "amqp://stackrabbit:rabbitpw@192.0.2.10:5672/" ]
    [ "$(get_notification_url)" = "amqp://stackrabbit:rabbitpw@192.0.2.10:45672/" ]
}

@test "subnode: pre-install passes without rabbit and without daemons here" {
    as_subnode
    stub_load_plugin rabbit
    run stub_phase stack pre-install
    [ "$status" -eq 0 ]
    stub_setup
    as_subnode
    stub_load_plugin qpid-dual
    run stub_phase stack pre-install
    [ "$status" -eq 0 ]
}

@test "subnode: install puts the driver in and starts nothing; extra checks the controller's bus" {
    as_subnode
    stub_load_plugin qpid-dual
    stub_phase stack install
    grep -qx "setup_develop $PLUGIN_DIR" "$STUB_LOG"
    [ -z "$(stub_calls '^(run_process|install_package|start_service|port-probe)')" ]
    [ -z "$(stub_calls 'peer-product')" ]
    stub_phase stack extra
    grep -qx "iniset $DATA_DIR/amqp1/bus-check.conf DEFAULT transport_url amqp://stackrabbit:rabbitpw@192.0.2.10:5672/" "$STUB_LOG"
    grep -q "^python $PLUGIN_DIR/tools/bus-check --config-file" "$STUB_LOG"
    stub_phase unstack
    stub_phase clean
    [ -z "$(stub_calls '^(stop_process|stop_service|uninstall_package)')" ]
}

@test "subnode in rabbit mode: no RabbitMQ user or plugin is touched here" {
    as_subnode
    stub_load_plugin rabbit
    stub_phase stack install
    [ -z "$(stub_calls 'rabbitmq')" ]
}

@test "role: a wrong AMQP1_ROLE, or a client whose bus is itself, stops pre-install" {
    AMQP1_ROLE=compute
    stub_load_plugin rabbit
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"AMQP1_ROLE=compute: set server"* ]]
    stub_setup
    AMQP1_ROLE=client
    SERVICE_HOST=127.0.0.1
    stub_load_plugin rabbit
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"AMQP1_HOST=127.0.0.1 is this host: set SERVICE_HOST"* ]]
}
