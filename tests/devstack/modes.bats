#!/usr/bin/env bats
#
# tests/devstack/modes.bats
# The mode table (devstack/lib/amqp1-modes): what each AMQP1_SERVICE mode
# runs, and that the rest of the plugin follows the table instead of
# testing the mode's name.

load stub-devstack

setup() {
    stub_setup
}

# Print "mode: rpc notify | daemons | port" for mode $1
describe_mode() {
    AMQP1_RPC_TRANSPORT_URL=""
    [ "$1" = external ] && AMQP1_RPC_TRANSPORT_URL=amqp://bus.example:5672/
    stub_load_plugin "$1"
    echo "$1: $(amqp1_role rpc) $(amqp1_role notify) | $(amqp1_daemons) | $AMQP1_DEFAULT_PORT"
}

@test "the table: roles, daemons and RPC port of every mode" {
    # each in a subshell: a mode's port default must not leak to the next
    [ "$(stub_load_plugin; echo "$AMQP1_MODES")" = "rabbit qpid qpid-dual qpid-hybrid external" ]
    [ "$(describe_mode rabbit)" = "rabbit: rabbitmq rabbitmq | rabbitmq | 5672" ]
    [ "$(describe_mode qpid)" = "qpid: qpidd qpidd | qpidd | 5672" ]
    [ "$(describe_mode qpid-dual)" = "qpid-dual: router qpidd | router qpidd | 5672" ]
    [ "$(describe_mode qpid-hybrid)" = "qpid-hybrid: router rabbit | router | 45672" ]
    [ "$(describe_mode external)" = "external: external external |  | 5672" ]
}

@test "the table: where credentials come from" {
    stub_load_plugin qpid
    [ "$AMQP1_USERNAME" = stackrabbit ]
    unset AMQP1_USERNAME
    AMQP1_RPC_TRANSPORT_URL=amqp://bus.example:5672/
    stub_load_plugin external
    [ -z "$AMQP1_USERNAME" ]
}

@test "a line added to the table is a mode, with no other change" {
    stub_load_plugin rabbit
    _AMQP1_MODE_TABLE+="router-only  router  router  router  5672  -  plugin  addressing_mode=routable"
    AMQP1_SERVICE=router-only
    AMQP1_MODES=$(amqp1_modes)
    amqp1_check_settings
    [ "$(amqp1_daemons)" = router ]
    [ "$(get_transport_url)" = "amqp://stackrabbit:rabbitpw@192.0.2.10:5672/" ]
    [ "$(get_notification_url)" = "amqp://stackrabbit:rabbitpw@192.0.2.10:5672/" ]
    run amqp1_notify_is_split
    [ "$status" -ne 0 ]
    [ "$(amqp1_driver_options)" = "addressing_mode=routable" ]
}

@test "a mode the table lacks fails every lookup" {
    stub_load_plugin rabbit
    run amqp1_mode_field rpc no-such-mode
    [ "$status" -ne 0 ]
    run amqp1_mode_field no-such-field rabbit
    [ "$status" -ne 0 ]
}

@test "no plugin file but the table tests AMQP1_SERVICE's value" {
    run grep -nE 'AMQP1_SERVICE (==|!=)|case "?\$AMQP1_SERVICE' \
        "$PLUGIN_DIR/devstack/plugin.sh" "$PLUGIN_DIR/devstack/settings" \
        "$PLUGIN_DIR"/devstack/lib/*
    [ "$status" -eq 1 ]
    [ -z "$output" ]
}

@test "every plugin library is sourced once, by settings" {
    run grep -n '^source\|^\. ' "$PLUGIN_DIR/devstack/plugin.sh"
    [ "$status" -eq 1 ]
    local lib
    for lib in "$PLUGIN_DIR"/devstack/lib/*; do
        [ "$(grep -c "^source \"\$AMQP1_DIR/devstack/lib/${lib##*/}\"$" \
            "$PLUGIN_DIR/devstack/settings")" -eq 1 ]
    done
}
