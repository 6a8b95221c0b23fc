#!/usr/bin/env bats
#
# tests/devstack/urls.bats
# The transport URLs and [oslo_messaging_amqp] options every DevStack
# caller gets in each mode, through the plugin's overrides of
# get_transport_url, get_notification_url, iniset_rpc_backend and
# rpc_backend_add_vhost.

load stub-devstack

setup() {
    stub_setup
}

# Run the calls DevStack's services make (keystone, nova, nova's cell
# conductors, swift's ceilometer filter) and record them
devstack_callers() {
    iniset_rpc_backend keystone /etc/keystone/keystone.conf oslo_messaging_notifications
    iniset /etc/nova/nova.conf oslo_messaging_notifications transport_url "$(get_notification_url)"
    iniset_rpc_backend nova /etc/nova/nova.conf
    rpc_backend_add_vhost nova_cell1
    iniset_rpc_backend nova /etc/nova/nova_cell1.conf DEFAULT nova_cell1
    iniset /etc/swift/proxy-server.conf filter:ceilometer url "$(get_notification_url)"
    iniset_rpc_backend cinder /etc/cinder/cinder.conf DEFAULT
}

@test "rabbit is the default mode, RabbitMQ's AMQP 1.0 for RPC and notifications" {
    stub_load_plugin
    [ "$AMQP1_SERVICE" = rabbit ]
    [ "$(get_transport_url)" = "amqp://stackrabbit:rabbitpw@192.0.2.10:5672/" ]
    [ "$(get_transport_url nova_cell1)" = "amqp://stackrabbit:rabbitpw@192.0.2.10:5672/nova_cell1" ]
    [ "$(get_notification_url)" = "amqp://stackrabbit:rabbitpw@192.0.2.10:5672/" ]
}

@test "rabbit: every caller gets amqp:// and no driver option" {
    stub_load_plugin rabbit
    devstack_callers
    grep -qx "iniset /etc/keystone/keystone.conf oslo_messaging_notifications transport_url amqp://stackrabbit:rabbitpw@192.0.2.10:5672/" "$STUB_LOG"
    grep -qx "iniset /etc/nova/nova.conf oslo_messaging_notifications transport_url amqp://stackrabbit:rabbitpw@192.0.2.10:5672/" "$STUB_LOG"
    grep -qx "iniset /etc/nova/nova.conf DEFAULT transport_url amqp://stackrabbit:rabbitpw@192.0.2.10:5672/" "$STUB_LOG"
    grep -qx "iniset /etc/nova/nova_cell1.conf DEFAULT transport_url amqp://stackrabbit:rabbitpw@192.0.2.10:5672/nova_cell1" "$STUB_LOG"
    grep -qx "iniset /etc/swift/proxy-server.conf filter:ceilometer url amqp://stackrabbit:rabbitpw@192.0.2.10:5672/" "$STUB_LOG"
    grep -qx "iniset /etc/cinder/cinder.conf DEFAULT transport_url amqp://stackrabbit:rabbitpw@192.0.2.10:5672/" "$STUB_LOG"
    [ -z "$(stub_calls oslo_messaging_amqp)" ]
    # nothing else written: RPC and notifications share the bus
    [ "$(stub_calls '^iniset' | wc -l)" -eq 6 ]
}

@test "rpc_backend_add_vhost returns 0 in every mode" {
    local mode
    for mode in rabbit qpid qpid-dual qpid-hybrid external; do
        AMQP1_RPC_TRANSPORT_URL=""
        [ "$mode" = external ] && AMQP1_RPC_TRANSPORT_URL=amqp://bus.example:5672/
        stub_load_plugin "$mode"
        run rpc_backend_add_vhost nova_cell1
        [ "$status" -eq 0 ]
        unset AMQP1_DEFAULT_PORT AMQP1_USERNAME
    done
}

@test "rabbit: a user of its own with its own password" {
    AMQP1_USERNAME=amqpuser AMQP1_PASSWORD='p@ss:w/rd'
    stub_load_plugin rabbit
    [ "$(get_transport_url)" = "amqp://amqpuser:p%40ss%3Aw%2Frd@192.0.2.10:5672/" ]
}

@test "rabbit: the old AMQP1_HOST and AMQP1_DEFAULT_PORT still work" {
    AMQP1_HOST=bus.example AMQP1_DEFAULT_PORT=5673
    stub_load_plugin rabbit
    [ "$(get_transport_url)" = "amqp://stackrabbit:rabbitpw@bus.example:5673/" ]
}

@test "qpid: qpidd for both, DevStack's credentials by default, legacy addressing option" {
    stub_load_plugin qpid
    devstack_callers
    grep -qx "iniset /etc/keystone/keystone.conf oslo_messaging_notifications transport_url amqp://stackrabbit:rabbitpw@192.0.2.10:5672/" "$STUB_LOG"
    grep -qx "iniset /etc/nova/nova.conf DEFAULT transport_url amqp://stackrabbit:rabbitpw@192.0.2.10:5672/" "$STUB_LOG"
    grep -qx "iniset /etc/nova/nova_cell1.conf DEFAULT transport_url amqp://stackrabbit:rabbitpw@192.0.2.10:5672/nova_cell1" "$STUB_LOG"
    grep -qx "iniset /etc/swift/proxy-server.conf filter:ceilometer url amqp://stackrabbit:rabbitpw@192.0.2.10:5672/" "$STUB_LOG"
    grep -qx "iniset /etc/nova/nova.conf oslo_messaging_amqp addressing_mode legacy" "$STUB_LOG"
    grep -qx "iniset /etc/keystone/keystone.conf oslo_messaging_amqp addressing_mode legacy" "$STUB_LOG"
}

@test "qpid: with a user, URLs carry the credentials" {
    AMQP1_USERNAME=amqp AMQP1_PASSWORD=secret
    stub_load_plugin qpid
    [ "$(get_transport_url)" = "amqp://amqp:secret@192.0.2.10:5672/" ]
    [ "$(get_notification_url)" = "amqp://amqp:secret@192.0.2.10:5672/" ]
}

@test "qpid-dual: router for RPC, qpidd on the notify port for notifications" {
    stub_load_plugin qpid-dual
    devstack_callers
    [ "$(get_transport_url)" = "amqp://stackrabbit:rabbitpw@192.0.2.10:5672/" ]
    [ "$(get_notification_url)" = "amqp://stackrabbit:rabbitpw@192.0.2.10:45672/" ]
    grep -qx "iniset /etc/keystone/keystone.conf oslo_messaging_notifications transport_url amqp://stackrabbit:rabbitpw@192.0.2.10:45672/" "$STUB_LOG"
    grep -qx "iniset /etc/nova/nova.conf DEFAULT transport_url amqp://stackrabbit:rabbitpw@192.0.2.10:5672/" "$STUB_LOG"
    grep -qx "iniset /etc/nova/nova_cell1.conf DEFAULT transport_url amqp://stackrabbit:rabbitpw@192.0.2.10:5672/nova_cell1" "$STUB_LOG"
    grep -qx "iniset /etc/swift/proxy-server.conf filter:ceilometer url amqp://stackrabbit:rabbitpw@192.0.2.10:45672/" "$STUB_LOG"
    # services that only call iniset_rpc_backend still notify to qpidd
    grep -qx "iniset /etc/cinder/cinder.conf oslo_messaging_notifications transport_url amqp://stackrabbit:rabbitpw@192.0.2.10:45672/" "$STUB_LOG"
    grep -qx "iniset /etc/nova/nova_cell1.conf oslo_messaging_notifications transport_url amqp://stackrabbit:rabbitpw@192.0.2.10:45672/" "$STUB_LOG"
    # dynamic addressing: no option
    [ -z "$(stub_calls oslo_messaging_amqp)" ]
}

@test "qpid-dual: the old AMQP1_NOTIFY_PORT moves qpidd" {
    AMQP1_NOTIFY_PORT=5673
    stub_load_plugin qpid-dual
    [ "$(get_notification_url)" = "amqp://stackrabbit:rabbitpw@192.0.2.10:5673/" ]
}

@test "qpid-hybrid: router for RPC (45672), rabbit:// to DevStack's RabbitMQ for notifications" {
    stub_load_plugin qpid-hybrid
    devstack_callers
    [ "$(get_transport_url)" = "amqp://stackrabbit:rabbitpw@192.0.2.10:45672/" ]
    [ "$(get_notification_url)" = "rabbit://stackrabbit:rabbitpw@192.0.2.10:5672/" ]
    grep -qx "iniset /etc/keystone/keystone.conf oslo_messaging_notifications transport_url rabbit://stackrabbit:rabbitpw@192.0.2.10:5672/" "$STUB_LOG"
    grep -qx "iniset /etc/nova/nova.conf oslo_messaging_notifications transport_url rabbit://stackrabbit:rabbitpw@192.0.2.10:5672/" "$STUB_LOG"
    grep -qx "iniset /etc/nova/nova.conf DEFAULT transport_url amqp://stackrabbit:rabbitpw@192.0.2.10:45672/" "$STUB_LOG"
    grep -qx "iniset /etc/nova/nova_cell1.conf DEFAULT transport_url amqp://stackrabbit:rabbitpw@192.0.2.10:45672/nova_cell1" "$STUB_LOG"
    grep -qx "iniset /etc/swift/proxy-server.conf filter:ceilometer url rabbit://stackrabbit:rabbitpw@192.0.2.10:5672/" "$STUB_LOG"
    grep -qx "iniset /etc/cinder/cinder.conf oslo_messaging_notifications transport_url rabbit://stackrabbit:rabbitpw@192.0.2.10:5672/" "$STUB_LOG"
}

@test "qpid-hybrid: RabbitMQ heartbeat settings follow DevStack's" {
    RABBIT_HEARTBEAT_RATE=3
    stub_load_plugin qpid-hybrid
    iniset_rpc_backend keystone /etc/keystone/keystone.conf oslo_messaging_notifications
    grep -qx "iniset /etc/keystone/keystone.conf oslo_messaging_rabbit heartbeat_rate 3" "$STUB_LOG"
}

@test "external: the given URLs, vhosts replace the path, query kept" {
    AMQP1_RPC_TRANSPORT_URL="amqp://u:p@bus1.example:5672/?x=1"
    AMQP1_NOTIFY_TRANSPORT_URL="rabbit://n:q@bus2.example:5672/"
    stub_load_plugin external
    devstack_callers
    [ "$(get_transport_url)" = "amqp://u:p@bus1.example:5672/?x=1" ]
    [ "$(get_transport_url nova_cell1)" = "amqp://u:p@bus1.example:5672/nova_cell1?x=1" ]
    [ "$(get_notification_url)" = "rabbit://n:q@bus2.example:5672/" ]
    grep -qx "iniset /etc/keystone/keystone.conf oslo_messaging_notifications transport_url rabbit://n:q@bus2.example:5672/" "$STUB_LOG"
    grep -qx "iniset /etc/nova/nova_cell1.conf DEFAULT transport_url amqp://u:p@bus1.example:5672/nova_cell1?x=1" "$STUB_LOG"
    grep -qx "iniset /etc/swift/proxy-server.conf filter:ceilometer url rabbit://n:q@bus2.example:5672/" "$STUB_LOG"
}

@test "external: notifications default to the RPC URL" {
    AMQP1_RPC_TRANSPORT_URL="amqp://u:p@bus1.example:5672/"
    stub_load_plugin external
    [ "$(get_notification_url)" = "amqp://u:p@bus1.example:5672/" ]
    iniset_rpc_backend nova /etc/nova/nova.conf
    [ -z "$(stub_calls 'oslo_messaging_notifications')" ]
}

@test "AMQP1_DRIVER_OPTS reach [oslo_messaging_amqp] of amqp:// users only" {
    AMQP1_DRIVER_OPTS="idle_timeout=60 trace=True"
    stub_load_plugin qpid-hybrid
    iniset_rpc_backend nova /etc/nova/nova.conf
    iniset_rpc_backend keystone /etc/keystone/keystone.conf oslo_messaging_notifications
    grep -qx "iniset /etc/nova/nova.conf oslo_messaging_amqp idle_timeout 60" "$STUB_LOG"
    grep -qx "iniset /etc/nova/nova.conf oslo_messaging_amqp trace True" "$STUB_LOG"
    [ -z "$(stub_calls 'keystone.conf oslo_messaging_amqp')" ]
}

@test "the overrides are not defined when amqp1 is disabled" {
    DISABLED_SERVICES=amqp1
    function enable_service { :; }
    function get_transport_url { echo "rabbit://devstack"; }
    stub_load_plugin rabbit
    [ "$(get_transport_url)" = "rabbit://devstack" ]
}

@test "external: a cluster's URL with several hosts reaches every caller, vhosts too" {
    AMQP1_RPC_TRANSPORT_URL="amqp://u:p@10.0.0.1:5672,u:p@10.0.0.2:5672,u:p@10.0.0.3:5672/"
    AMQP1_DRIVER_OPTS="rabbit_quorum_queue=True"
    stub_load_plugin external
    [ "$(get_transport_url nova_cell1)" = "amqp://u:p@10.0.0.1:5672,u:p@10.0.0.2:5672,u:p@10.0.0.3:5672/nova_cell1" ]
    [ "$(get_notification_url)" = "amqp://u:p@10.0.0.1:5672,u:p@10.0.0.2:5672,u:p@10.0.0.3:5672/" ]
    iniset_rpc_backend nova /etc/nova/nova.conf
    grep -qx "iniset /etc/nova/nova.conf oslo_messaging_amqp rabbit_quorum_queue True" "$STUB_LOG"
    run stub_phase stack pre-install
    [ "$status" -eq 0 ]
}
