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

@test "start: each daemon must answer as itself, with the mode's credentials" {
    stub_fake_binary qpidd >/dev/null
    stub_fake_binary qdrouterd >/dev/null
    stub_load_plugin qpid-dual
    stub_phase stack install
    grep -qx "python $PLUGIN_DIR/tools/bus-check --timeout 20 --peer-product - --expect qpid-dispatch-router --expect skupper-router" "$STUB_LOG"
    grep -qx "stdin amqp://stackrabbit:rabbitpw@127.0.0.1:5672/" "$STUB_LOG"
    grep -qx "python $PLUGIN_DIR/tools/bus-check --timeout 20 --peer-product - --expect qpid-cpp" "$STUB_LOG"
    grep -qx "stdin amqp://stackrabbit:rabbitpw@127.0.0.1:45672/" "$STUB_LOG"
    # the password never is on a command line (ps shows those)
    [ -z "$(stub_calls '^python .*rabbitpw')" ]
}

@test "start: RabbitMQ must answer as RabbitMQ in rabbit mode" {
    STUB_RABBIT_USERS="guest stackrabbit"
    stub_load_plugin rabbit
    stub_phase stack install
    grep -qx "python $PLUGIN_DIR/tools/bus-check --timeout 20 --peer-product - --expect RabbitMQ" "$STUB_LOG"
    grep -qx "stdin amqp://stackrabbit:rabbitpw@127.0.0.1:5672/" "$STUB_LOG"
}

@test "start: a port that answers as another daemon fails the stack with the way out" {
    stub_fake_binary qpidd >/dev/null
    stub_load_plugin qpid
    STUB_PYTHON_RC=1
    run stub_phase stack install
    [ "$status" -ne 0 ]
    [[ $output == *"amqp1: port 5672 does not answer as qpidd"* ]]
    [[ $output == *"stop rabbitmq-server"* ]]
}

@test "pre-install: RabbitMQ left on qpidd's port stops the stack, naming it" {
    stub_fake_binary qpidd >/dev/null
    STUB_LISTENERS="5672 beam.smp 4242"
    stub_load_plugin qpid
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"qpidd of mode qpid must listen on port 5672, which beam.smp (pid 4242) holds"* ]]
    [[ $output == *"sudo systemctl stop rabbitmq-server"* ]]
}

@test "pre-install: the mode's own daemon on its port (an earlier stack) is fine" {
    stub_fake_binary qpidd >/dev/null
    stub_fake_binary qdrouterd >/dev/null
    STUB_LISTENERS="5672 qdrouterd 11 45672 qpidd 12"
    stub_load_plugin qpid-dual
    run stub_phase stack pre-install
    [ "$status" -eq 0 ]
}

@test "pre-install: qpid-hybrid expects RabbitMQ on 5672, not a stranger on the router's port" {
    stub_fake_binary qdrouterd >/dev/null
    STUB_LISTENERS="5672 beam.smp 10"
    stub_load_plugin qpid-hybrid
    run stub_phase stack pre-install
    [ "$status" -eq 0 ]
    STUB_LISTENERS="5672 beam.smp 10 45672 nc 77"
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"qdrouterd of mode qpid-hybrid must listen on port 45672, which nc (pid 77) holds: stop it, or give qdrouterd another port (AMQP1_DEFAULT_PORT"* ]]
}
