#!/usr/bin/env bats
#
# tests/devstack/tls.bats
# TLS to the bus (AMQP1_SSL): defaults, what each daemon's configuration
# and every service get, the certificate from DevStack's CA, and the
# settings refused with their way out.

load stub-devstack

setup() {
    stub_setup
    PKI=$BATS_TEST_TMPDIR/pki
    mkdir -p "$PKI"
    for f in server.pem server.key ca.pem; do
        echo "$f" > "$PKI/$f"
    done
}

# Give the plugin the test's certificate, key and CA
given_files() {
    AMQP1_SSL=True
    AMQP1_SSL_CERT_FILE=$PKI/server.pem
    AMQP1_SSL_KEY_FILE=$PKI/server.key
    AMQP1_SSL_CA_FILE=$PKI/ca.pem
}

# Stand-ins of DevStack's lib/tls: a CA in INT_CA_DIR, make_cert recorded
devstack_ca() {
    INT_CA_DIR=$BATS_TEST_TMPDIR/int-ca
    mkdir -p "$INT_CA_DIR/private"
    echo chain > "$INT_CA_DIR/ca-chain.pem"
    function make_cert {
        _stub_record make_cert "$@"
        echo cert > "$1/$2.crt"
        echo key > "$1/private/$2.key"
    }
}

@test "TLS is off by default and on with DevStack's tls-proxy" {
    stub_load_plugin rabbit
    [ "$AMQP1_SSL" = False ]
    [ "$(get_transport_url)" = "amqp://stackrabbit:rabbitpw@192.0.2.10:5672/" ]
    stub_setup
    ENABLED_SERVICES+=,tls-proxy
    stub_load_plugin rabbit
    [ "$AMQP1_SSL" = True ]
    [ "$AMQP1_SSL_PORT" = 5671 ]
}

@test "rabbit: services get the TLS port, ssl and the CA copy" {
    given_files
    stub_load_plugin rabbit
    [ "$(get_transport_url)" = "amqp://stackrabbit:rabbitpw@192.0.2.10:5671/" ]
    iniset_rpc_backend nova /etc/nova/nova.conf
    grep -qx "iniset /etc/nova/nova.conf oslo_messaging_amqp ssl True" "$STUB_LOG"
    grep -qx "iniset /etc/nova/nova.conf oslo_messaging_amqp ssl_ca_file $AMQP1_CONF_DIR/tls/ca.pem" "$STUB_LOG"
}

@test "rabbit: a TLS listener in conf.d, RabbitMQ's copies, one restart, probe over TLS" {
    given_files
    STUB_RABBIT_USERS="guest stackrabbit"
    stub_load_plugin rabbit
    stub_phase stack install
    local conf=$AMQP1_RABBITMQ_CONF_DIR/conf.d/90-devstack-amqp1-tls.conf
    local dir=$AMQP1_RABBITMQ_CONF_DIR/devstack-amqp1
    grep -qx "listeners.ssl.default = 5671" "$conf"
    grep -qx "ssl_options.certfile = $dir/server.pem" "$conf"
    grep -qx "ssl_options.keyfile = $dir/server.key" "$conf"
    grep -qx "ssl_options.cacertfile = $dir/ca.pem" "$conf"
    [ "$(cat "$dir/server.key")" = server.key ]
    [ "$(stat -c %a "$dir/server.key")" = 600 ]
    [ "$(stub_calls '^restart_service rabbitmq-server' | wc -l)" -eq 1 ]
    grep -qx "python $PLUGIN_DIR/tools/bus-check --timeout 20 --peer-product - --expect RabbitMQ --ssl-ca-file $AMQP1_CONF_DIR/tls/ca.pem" "$STUB_LOG"
    grep -qx "stdin amqps://stackrabbit:rabbitpw@127.0.0.1:5671/" "$STUB_LOG"
    grep -qx "port-probe 127.0.0.1 5671" "$STUB_LOG"
    # a second stack with the same files does not restart RabbitMQ
    stub_phase stack install
    [ "$(stub_calls '^restart_service rabbitmq-server' | wc -l)" -eq 1 ]
    stub_phase clean
    [ ! -e "$conf" ]
    [ ! -e "$dir" ]
}

@test "router: an sslProfile its listener requires" {
    given_files
    stub_fake_binary qdrouterd >/dev/null
    stub_load_plugin qpid-hybrid
    stub_phase stack install
    local conf=$AMQP1_CONF_DIR/qdrouterd.conf
    grep -qE "^ +sslProfile: amqp1-tls$" "$conf"
    grep -qE "^ +requireSsl: yes$" "$conf"
    grep -qE "^ +certFile: $AMQP1_CONF_DIR/tls/server.pem$" "$conf"
    grep -qE "^ +privateKeyFile: $AMQP1_CONF_DIR/tls/server.key$" "$conf"
    grep -qE "^ +caCertFile: $AMQP1_CONF_DIR/tls/ca.pem$" "$conf"
    # RPC on the router's own port, with TLS; notifications stay rabbit://
    [ "$(get_transport_url)" = "amqp://stackrabbit:rabbitpw@192.0.2.10:45672/" ]
}

@test "router without TLS: no sslProfile, no requireSsl" {
    stub_fake_binary qdrouterd >/dev/null
    stub_load_plugin qpid-hybrid
    stub_phase stack install
    ! grep -q "sslProfile\|requireSsl" "$AMQP1_CONF_DIR/qdrouterd.conf"
}

@test "qpidd with TLS stops pre-install with the way out" {
    local mode
    for mode in qpid qpid-dual; do
        stub_setup
        given_files
        stub_fake_binary qpidd >/dev/null
        stub_fake_binary qdrouterd >/dev/null
        stub_load_plugin "$mode"
        run stub_phase stack pre-install
        [ "$status" -ne 0 ]
        [[ $output == *"AMQP1_SSL=True with qpidd (mode $mode)"*"NSS certificate database"*"AMQP1_SSL=False"* ]]
    done
}

@test "given files must come as a set and be readable" {
    AMQP1_SSL=True
    AMQP1_SSL_CERT_FILE=$PKI/server.pem
    stub_load_plugin rabbit
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"go together, with AMQP1_SSL_CA_FILE: set all three"* ]]
    stub_setup
    given_files
    AMQP1_SSL_KEY_FILE=$PKI/missing.key
    stub_load_plugin rabbit
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"AMQP1_SSL_KEY_FILE=$PKI/missing.key is not a readable file"* ]]
}

@test "without files: a certificate from DevStack's CA naming AMQP1_HOST as a DNS name" {
    AMQP1_SSL=True
    devstack_ca
    STUB_RABBIT_USERS="guest stackrabbit"
    stub_load_plugin rabbit
    stub_phase stack install
    grep -qx "make_cert $INT_CA_DIR amqp1-bus $(hostname -f) DNS:192.0.2.10" "$STUB_LOG"
    [ "$(cat "$AMQP1_CONF_DIR/tls/ca.pem")" = chain ]
    [ "$(cat "$AMQP1_CONF_DIR/tls/server.pem")" = cert ]
}

@test "without files and without DevStack's CA functions: stops naming the files" {
    AMQP1_SSL=True
    STUB_RABBIT_USERS="guest stackrabbit"
    stub_load_plugin rabbit
    run stub_phase stack install
    [ "$status" -ne 0 ]
    [[ $output == *"set AMQP1_SSL_CERT_FILE, AMQP1_SSL_KEY_FILE and AMQP1_SSL_CA_FILE"* ]]
}

@test "subnode with TLS: only the controller's CA, no certificate made" {
    AMQP1_SSL=True
    devstack_ca
    HOST_IP=192.0.2.20
    ENABLED_SERVICES=n-cpu
    stub_load_plugin rabbit
    [ "$AMQP1_ROLE" = client ]
    stub_phase stack install
    [ "$(cat "$AMQP1_CONF_DIR/tls/ca.pem")" = chain ]
    [ ! -e "$AMQP1_CONF_DIR/tls/server.key" ]
    [ -z "$(stub_calls '^make_cert')" ]
}
