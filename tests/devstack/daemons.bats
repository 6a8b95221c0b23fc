#!/usr/bin/env bats
#
# tests/devstack/daemons.bats
# The phases plugin.sh dispatches: installing the driver and the daemons,
# the generated router (qdrouterd/skrouterd), qpidd and SASL configs,
# starting, unstack and clean; and the services settings enables.

load stub-devstack

setup() {
    stub_setup
}

# Print the octal mode of file $1
mode_of() {
    stat -c %a "$1"
}

@test "settings: rabbit stays enabled only in rabbit and qpid-hybrid" {
    local mode
    for mode in rabbit qpid-hybrid; do
        stub_setup
        stub_load_plugin "$mode"
        is_service_enabled amqp1
        is_service_enabled rabbit
    done
    for mode in qpid qpid-dual external; do
        stub_setup
        AMQP1_RPC_TRANSPORT_URL=amqp://bus.example:5672/
        stub_load_plugin "$mode"
        is_service_enabled amqp1
        ! is_service_enabled rabbit
    done
}

@test "settings: every variable has its default" {
    stub_load_plugin
    [ "$AMQP1_SERVICE" = rabbit ]
    [ "$AMQP1_HOST" = 192.0.2.10 ]
    [ "$AMQP1_DEFAULT_PORT" = 5672 ]
    [ "$AMQP1_NOTIFY_PORT" = 45672 ]
    [ "$AMQP1_USERNAME" = stackrabbit ]
    [ "$AMQP1_PASSWORD" = "" ]
    [ "$AMQP1_ANONYMOUS" = False ]
    [ "$AMQP1_ROUTER_THREADS" = 4 ]
    [ "$AMQP1_ROUTER" = qdrouterd ]
    [ "$AMQP1_DIR" = "$PLUGIN_DIR" ]
    [ "$AMQP1_LOG_DIR" = "$LOGDIR" ]
    grep -qx "define_plugin amqp1" "$STUB_LOG"
}

@test "stack install (rabbit, 3.x): driver via pip_install/setup_develop, amqp1_0 plugin, user" {
    STUB_INSTALLED=rabbitmq-server
    stub_load_plugin rabbit
    stub_phase stack install
    grep -qx "pip_install pyngus python-qpid-proton" "$STUB_LOG"
    grep -qx "setup_develop $PLUGIN_DIR" "$STUB_LOG"
    [ -z "$(stub_calls 'pip_install_gr')" ]
    grep -qx "rabbitmq-plugins enable rabbitmq_amqp1_0" "$STUB_LOG"
    grep -qx "rabbitmqctl add_user stackrabbit rabbitpw" "$STUB_LOG"
    grep -qx "rabbitmqctl set_permissions -p / stackrabbit .\* .\* .\*" "$STUB_LOG"
    grep -qx "port-probe 127.0.0.1 5672" "$STUB_LOG"
    grep -qx "rabbitmqctl -q eval application:set_env(rabbitmq_amqp1_0, default_user, none), application:set_env(rabbit, anonymous_login_user, none)." "$STUB_LOG"
    [ -z "$(stub_calls '^(install_package|run_process)')" ]
}

@test "stack install (rabbit, 4.x): native AMQP 1.0, no plugin" {
    STUB_INSTALLED=rabbitmq-server
    STUB_RABBIT_VERSION=4.0.5
    STUB_RABBIT_USERS="guest stackrabbit"
    stub_load_plugin rabbit
    stub_phase stack install
    [ -z "$(stub_calls 'rabbitmq-plugins enable')" ]
    grep -qx "rabbitmqctl change_password stackrabbit rabbitpw" "$STUB_LOG"
}

@test "stack install (rabbit): an unreadable version stops with a message" {
    STUB_INSTALLED=rabbitmq-server
    STUB_RABBIT_VERSION=""
    stub_load_plugin rabbit
    run stub_phase stack install
    [ "$status" -ne 0 ]
    [[ $output == *"needs RabbitMQ 3.x or 4.x"* ]]
}

@test "stack install (qpid, package): installs qpidd, writes config, starts it" {
    STUB_APT_PACKAGES="qpidd"
    stub_fake_binary qpidd >/dev/null
    stub_load_plugin qpid
    stub_phase stack install
    grep -qx "install_package qpidd" "$STUB_LOG"
    grep -qx "qpidd" "$DATA_DIR/amqp1/installed-packages"
    grep -qx "run_process amqp1-qpidd $STUB_DIR/bin/qpidd --config $AMQP1_CONF_DIR/qpidd.conf" "$STUB_LOG"
    grep -qx "port-probe 127.0.0.1 5672" "$STUB_LOG"
    is_service_enabled amqp1-qpidd
}

@test "qpidd.conf: address patterns, port, anonymous when asked, log under LOGDIR" {
    AMQP1_ANONYMOUS=True
    AMQP1_QPIDD_BIN=$(stub_fake_binary qpidd-1.39)
    stub_load_plugin qpid
    stub_phase stack install
    local conf=$AMQP1_CONF_DIR/qpidd.conf
    grep -qx "queue-patterns=exclusive" "$conf"
    grep -qx "queue-patterns=unicast" "$conf"
    grep -qx "topic-patterns=broadcast" "$conf"
    grep -qx "port=5672" "$conf"
    grep -qx "interface=$AMQP1_LISTEN_ADDRESS" "$conf"
    grep -qx "auth=no" "$conf"
    grep -qx "log-to-file=$LOGDIR/qpidd.log" "$conf"
    grep -qx "mech_list: ANONYMOUS" "$AMQP1_CONF_DIR/sasl2/qpidd.conf"
    [ -z "$(stub_calls saslpasswd2)" ]
    [ -z "$(stub_calls '^install_package')" ]
    grep -qx "run_process amqp1-qpidd $AMQP1_QPIDD_BIN --config $conf" "$STUB_LOG"
    [ "$(mode_of "$conf")" = 640 ]
}

@test "qpidd with a user: SASL PLAIN, sasldb via saslpasswd2 in realm QPID, mode 0640" {
    AMQP1_USERNAME=amqp AMQP1_PASSWORD=secret
    AMQP1_QPIDD_BIN=$(stub_fake_binary qpidd)
    stub_load_plugin qpid
    stub_phase stack install
    local conf=$AMQP1_CONF_DIR/qpidd.conf
    grep -qx "auth=yes" "$conf"
    grep -qx "realm=QPID" "$conf"
    grep -qx "sasl-config=$AMQP1_CONF_DIR/sasl2" "$conf"
    grep -qx "mech_list: PLAIN" "$AMQP1_CONF_DIR/sasl2/qpidd.conf"
    grep -qx "sasldb_path: $AMQP1_CONF_DIR/sasl2/qpidd.sasldb" "$AMQP1_CONF_DIR/sasl2/qpidd.conf"
    grep -qx "saslpasswd2 -c -p -f $AMQP1_CONF_DIR/sasl2/qpidd.sasldb -u QPID amqp (password: secret)" "$STUB_LOG"
    [ "$(mode_of "$AMQP1_CONF_DIR/sasl2/qpidd.sasldb")" = 640 ]
    grep -qx "install_package sasl2-bin" "$STUB_LOG"
    grep -qx "install_package libsasl2-modules" "$STUB_LOG"
}

@test "qpidd by default: SASL PLAIN as DevStack's user, service amqp, no connection limit" {
    AMQP1_QPIDD_BIN=$(stub_fake_binary qpidd)
    stub_load_plugin qpid
    stub_phase stack install
    local conf=$AMQP1_CONF_DIR/qpidd.conf
    grep -qx "auth=yes" "$conf"
    grep -qx "sasl-service-name=amqp" "$conf"
    grep -qx "max-connections=0" "$conf"
    grep -qx "mech_list: PLAIN" "$AMQP1_CONF_DIR/sasl2/qpidd.conf"
    ! grep -q ANONYMOUS "$AMQP1_CONF_DIR/sasl2/qpidd.conf"
    grep -qx "saslpasswd2 -c -p -f $AMQP1_CONF_DIR/sasl2/qpidd.sasldb -u QPID stackrabbit (password: rabbitpw)" "$STUB_LOG"
}

@test "router by default: authenticatePeer with PLAIN as DevStack's user, worker threads" {
    AMQP1_QDROUTERD_BIN=$(stub_fake_binary qdrouterd)
    AMQP1_QPIDD_BIN=$(stub_fake_binary qpidd)
    AMQP1_ROUTER_THREADS=8
    stub_load_plugin qpid-dual
    stub_phase stack install
    local conf=$AMQP1_CONF_DIR/qdrouterd.conf
    grep -qE "^ +authenticatePeer: yes$" "$conf"
    grep -qE "^ +saslMechanisms: PLAIN$" "$conf"
    grep -qE "^ +workerThreads: 8$" "$conf"
    grep -qx "mech_list: PLAIN" "$AMQP1_CONF_DIR/sasl2/amqp1-router.conf"
    grep -qx "saslpasswd2 -c -p -f $AMQP1_CONF_DIR/sasl2/router.sasldb stackrabbit (password: rabbitpw)" "$STUB_LOG"
    grep -qx "auth=yes" "$AMQP1_CONF_DIR/qpidd.conf"
}

@test "qpid-dual: router on 5672 and qpidd on 45672" {
    AMQP1_QDROUTERD_BIN=$(stub_fake_binary qdrouterd)
    AMQP1_QPIDD_BIN=$(stub_fake_binary qpidd)
    stub_load_plugin qpid-dual
    stub_phase stack install
    grep -qx "port=45672" "$AMQP1_CONF_DIR/qpidd.conf"
    grep -qE "^ +port: 5672$" "$AMQP1_CONF_DIR/qdrouterd.conf"
    grep -qx "run_process amqp1-router $AMQP1_QDROUTERD_BIN -c $AMQP1_CONF_DIR/qdrouterd.conf" "$STUB_LOG"
    grep -qx "run_process amqp1-qpidd $AMQP1_QPIDD_BIN --config $AMQP1_CONF_DIR/qpidd.conf" "$STUB_LOG"
    is_service_enabled amqp1-router
    is_service_enabled amqp1-qpidd
}

@test "router config: routable and legacy prefixes with their distributions" {
    AMQP1_QDROUTERD_BIN=$(stub_fake_binary qdrouterd)
    stub_load_plugin qpid-hybrid
    stub_phase stack install
    local conf=$AMQP1_CONF_DIR/qdrouterd.conf
    # "prefix distribution" pairs, in file order
    local pairs
    pairs=$(awk '/prefix:/ {p=$2} /distribution:/ {print p, $2}' "$conf")
    [ "$pairs" = "openstack.org/om/rpc/multicast multicast
openstack.org/om/rpc/unicast closest
openstack.org/om/rpc/anycast balanced
openstack.org/om/notify/multicast multicast
openstack.org/om/notify/unicast closest
openstack.org/om/notify/anycast balanced
unicast closest
exclusive closest
broadcast multicast" ]
}

@test "router config: listener, anonymous SASL when asked, attributes both routers accept" {
    AMQP1_ANONYMOUS=True
    AMQP1_QDROUTERD_BIN=$(stub_fake_binary qdrouterd)
    stub_load_plugin qpid-hybrid
    stub_phase stack install
    local conf=$AMQP1_CONF_DIR/qdrouterd.conf
    grep -qE "^ +host: 0\.0\.0\.0$" "$conf"
    grep -qE "^ +port: 45672$" "$conf"
    grep -qE "^ +authenticatePeer: no$" "$conf"
    grep -qE "^ +saslMechanisms: ANONYMOUS$" "$conf"
    grep -qE "^ +saslConfigDir: $AMQP1_CONF_DIR/sasl2$" "$conf"
    grep -qE "^ +saslConfigName: amqp1-router$" "$conf"
    grep -qE "^ +workerThreads: 4$" "$conf"
    grep -qE "^ +outputFile: $LOGDIR/qdrouterd.log$" "$conf"
    # none of qdrouterd's deprecated aliases
    ! grep -qE "^ +(addr|saslConfigPath|output):" "$conf"
    grep -qx "mech_list: ANONYMOUS" "$AMQP1_CONF_DIR/sasl2/amqp1-router.conf"
    [ "$(mode_of "$conf")" = 640 ]
}

@test "skrouterd: same config file under its name, its binary, with a user" {
    AMQP1_ROUTER=skrouterd
    AMQP1_USERNAME=amqp AMQP1_PASSWORD=secret
    AMQP1_SKROUTERD_BIN=$(stub_fake_binary skrouterd)
    stub_load_plugin qpid-hybrid
    stub_phase stack install
    local conf=$AMQP1_CONF_DIR/skrouterd.conf
    grep -qE "^ +authenticatePeer: yes$" "$conf"
    grep -qE "^ +saslMechanisms: PLAIN$" "$conf"
    grep -qE "^ +outputFile: $LOGDIR/skrouterd.log$" "$conf"
    grep -qx "mech_list: PLAIN" "$AMQP1_CONF_DIR/sasl2/amqp1-router.conf"
    grep -qx "saslpasswd2 -c -p -f $AMQP1_CONF_DIR/sasl2/router.sasldb amqp (password: secret)" "$STUB_LOG"
    [ "$(mode_of "$AMQP1_CONF_DIR/sasl2/router.sasldb")" = 640 ]
    grep -qx "run_process amqp1-router $AMQP1_SKROUTERD_BIN -c $conf" "$STUB_LOG"
    grep -qx "port-probe 127.0.0.1 45672" "$STUB_LOG"
}

@test "the router package is taken when the distribution has one" {
    STUB_APT_PACKAGES="skupper-router"
    AMQP1_ROUTER=skrouterd
    stub_fake_binary skrouterd >/dev/null
    stub_load_plugin qpid-hybrid
    stub_phase stack install
    grep -qx "install_package skupper-router" "$STUB_LOG"
    grep -qx "stop_service skrouterd" "$STUB_LOG"
}

@test "unstack stops the daemons" {
    AMQP1_QDROUTERD_BIN=$(stub_fake_binary qdrouterd)
    AMQP1_QPIDD_BIN=$(stub_fake_binary qpidd)
    stub_load_plugin qpid-dual
    stub_phase unstack
    grep -qx "stop_process amqp1-router" "$STUB_LOG"
    grep -qx "stop_process amqp1-qpidd" "$STUB_LOG"
}

@test "clean removes state, configs and the packages the plugin installed" {
    STUB_APT_PACKAGES="qpidd"
    stub_fake_binary qpidd >/dev/null
    AMQP1_USERNAME=amqp AMQP1_PASSWORD=secret
    stub_load_plugin qpid
    stub_phase stack install
    [ -e "$AMQP1_CONF_DIR/qpidd.conf" ]
    stub_phase unstack
    stub_phase clean
    [ ! -e "$AMQP1_CONF_DIR" ]
    [ ! -e "$DATA_DIR/amqp1" ]
    grep -qx "uninstall_package qpidd" "$STUB_LOG"
    grep -qx "uninstall_package sasl2-bin" "$STUB_LOG"
}

@test "clean in rabbit mode removes the plugin's own RabbitMQ user and plugin" {
    STUB_INSTALLED=rabbitmq-server
    AMQP1_USERNAME=amqpuser AMQP1_PASSWORD=secret
    stub_load_plugin rabbit
    stub_phase stack install
    stub_phase clean
    grep -qx "rabbitmqctl delete_user amqpuser" "$STUB_LOG"
    grep -qx "rabbitmq-plugins disable --offline rabbitmq_amqp1_0" "$STUB_LOG"
    [ -z "$(stub_calls 'uninstall_package')" ]
}

@test "clean in rabbit mode keeps DevStack's own user" {
    STUB_INSTALLED=rabbitmq-server
    stub_load_plugin rabbit
    stub_phase stack install
    stub_phase clean
    [ -z "$(stub_calls 'delete_user')" ]
}

@test "stack extra prints the URLs without passwords" {
    stub_load_plugin rabbit
    run stub_phase stack extra
    [ "$status" -eq 0 ]
    [ "${lines[0]}" = "amqp1: mode rabbit (server); RPC amqp://stackrabbit:***@192.0.2.10:5672/; notifications amqp://stackrabbit:***@192.0.2.10:5672/" ]
    [ "${lines[1]}" = "amqp1: RabbitMQ on port 5672, log /var/log/rabbitmq" ]
    [[ $output != *rabbitpw* ]]
}

@test "stack extra names each daemon's port and log" {
    stub_fake_binary qpidd >/dev/null
    stub_fake_binary qdrouterd >/dev/null
    stub_load_plugin qpid-dual
    run stub_phase stack extra
    [ "$status" -eq 0 ]
    [[ $output == *"amqp1: qdrouterd on port 5672, log $LOGDIR/qdrouterd.log"* ]]
    [[ $output == *"amqp1: qpidd on port 45672, log $LOGDIR/qpidd.log"* ]]
}

@test "xtrace: off while the plugin is sourced, the caller's in its phases" {
    stub_load_plugin rabbit
    local trace=$BATS_TEST_TMPDIR/trace
    (
        set -o xtrace
        stub_phase stack extra
        # the caller's setting is back after the plugin
        [[ $- == *x* ]]
    ) 2> "$trace"
    # the phase's commands are traced...
    grep -q "amqp1_summary" "$trace"
    grep -q "amqp1_bus_check" "$trace"
    # ...but not the sourcing of the libraries (their definitions)
    ! grep -q "_XTRACE_AMQP1_QPIDD=" "$trace"
    (
        set +o xtrace
        stub_phase stack extra
        [[ $- != *x* ]]
    ) 2> "$trace"
    ! grep -q "amqp1_summary" "$trace"
}
