#!/usr/bin/env bats
#
# tests/devstack/checks.bats
# What the plugin checks around a stack: the oslo.messaging it will run
# with (stack pre-install) and the bus the services got (stack extra).

load stub-devstack

setup() {
    stub_setup
}

# Write the requirements repository's upper-constraints.txt pinning
# oslo.messaging to $1
write_constraints() {
    mkdir -p "$REQUIREMENTS_DIR"
    printf 'oslo.log===7.1.0\noslo.messaging===%s\noslo.utils===9.0.0\n' "$1" \
        > "$REQUIREMENTS_DIR/upper-constraints.txt"
}

@test "stack extra runs the bus check on a config written like the services'" {
    stub_load_plugin rabbit
    stub_phase stack extra
    local conf=$DATA_DIR/amqp1/bus-check.conf
    grep -qx "python $PLUGIN_DIR/tools/bus-check --config-file $conf" "$STUB_LOG"
    grep -qx "iniset $conf DEFAULT transport_url amqp://stackrabbit:rabbitpw@192.0.2.10:5672/" "$STUB_LOG"
    grep -qx "iniset $conf oslo_messaging_notifications transport_url amqp://stackrabbit:rabbitpw@192.0.2.10:5672/" "$STUB_LOG"
    # the file holds a password: only its owner reads it
    [ "$(stat -c %a "$conf")" = 600 ]
}

@test "stack extra: the bus check of qpid gets qpid's driver options" {
    stub_fake_binary qpidd >/dev/null
    stub_load_plugin qpid
    stub_phase stack extra
    grep -qx "iniset $DATA_DIR/amqp1/bus-check.conf oslo_messaging_amqp addressing_mode legacy" "$STUB_LOG"
}

@test "stack extra: a failed bus check fails the stack, naming the way out" {
    stub_load_plugin rabbit
    STUB_PYTHON_RC=1
    run stub_phase stack extra
    [ "$status" -ne 0 ]
    [[ $output == *"the bus check failed"* ]]
    [[ $output == *"AMQP1_BUS_CHECK=False"* ]]
}

@test "stack extra: AMQP1_BUS_CHECK=False skips the check" {
    AMQP1_BUS_CHECK=False
    stub_load_plugin rabbit
    STUB_PYTHON_RC=1
    run stub_phase stack extra
    [ "$status" -eq 0 ]
    [ -z "$(stub_calls '^python')" ]
}

@test "stack extra: a bus check that hangs is cut off after AMQP1_BUS_CHECK_TIMEOUT" {
    AMQP1_BUS_CHECK_TIMEOUT=1
    stub_load_plugin rabbit
    printf '#!/bin/sh\nexec sleep 30\n' > "$AMQP1_PYTHON"
    SECONDS=0
    run stub_phase stack extra
    [ "$status" -ne 0 ]
    [ "$SECONDS" -lt 10 ]
    [[ $output == *"the bus check failed"* ]]
}

@test "pre-install: AMQP1_BUS_CHECK must be True or False" {
    AMQP1_BUS_CHECK=yes
    stub_load_plugin rabbit
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"AMQP1_BUS_CHECK=yes: set it to True or False"* ]]
}

@test "pre-install: a branch pinning oslo.messaging 14 stops with the way out" {
    write_constraints 14.9.1
    stub_load_plugin rabbit
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"oslo.messaging 14.9.1 (from $REQUIREMENTS_DIR/upper-constraints.txt)"* ]]
    [[ $output == *"needs oslo.messaging 15 or later"* ]]
    [[ $output == *"in-tree driver"* ]]
}

@test "pre-install: the pin wins over what the Python has now" {
    write_constraints 18.3.1
    STUB_OSLO_MESSAGING=14.9.1
    stub_load_plugin rabbit
    run stub_phase stack pre-install
    [ "$status" -eq 0 ]
}

@test "pre-install: without constraints, the installed oslo.messaging decides" {
    STUB_OSLO_MESSAGING=14.7.0
    stub_load_plugin rabbit
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"oslo.messaging 14.7.0 (from $AMQP1_PYTHON)"* ]]
    STUB_OSLO_MESSAGING=15.0.0
    run stub_phase stack pre-install
    [ "$status" -eq 0 ]
}

@test "pre-install: no oslo.messaging yet and no constraints is no error" {
    stub_load_plugin rabbit
    run stub_phase stack pre-install
    [ "$status" -eq 0 ]
}
