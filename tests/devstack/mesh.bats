#!/usr/bin/env bats
#
# tests/devstack/mesh.bats
# A mesh of routers across DevStack nodes (AMQP1_ROUTER_PEERS): an interior
# router with an inter-router listener and one connector per pair of
# routers, authenticated like the services' listener; without peers the
# router stays standalone with no trace of the mesh.

load stub-devstack

setup() {
    stub_setup
    AMQP1_QDROUTERD_BIN=$(stub_fake_binary qdrouterd)
}

# Configure the router of this node, whose address is $1, in qpid-hybrid
# with AMQP1_ROUTER_PEERS=$2; print the configuration file
configure_node() {
    AMQP1_ROUTER_ADDRESS=$1
    AMQP1_ROUTER_PEERS=$2
    stub_load_plugin qpid-hybrid
    amqp1_check_settings
    configure_amqp1_router
    echo "$AMQP1_CONF_DIR/qdrouterd.conf"
}

# Print "host:port" of every inter-router connector of configuration $1
connectors() {
    awk '/^connector/ {c=1} c && /host:/ {h=$2} c && /port:/ {print h ":" $2; c=0}' "$1"
}

@test "settings: the mesh is off by default, port 5673, this host's address" {
    stub_load_plugin qpid-hybrid
    [ "$AMQP1_ROUTER_PEERS" = "" ]
    [ "$AMQP1_ROUTER_INTER_PORT" = 5673 ]
    [ "$AMQP1_ROUTER_ADDRESS" = 192.0.2.10 ]
    [ "$AMQP1_ROUTER_ID" = "" ]
    ! amqp1_router_is_interior
}

@test "no peers: a standalone router, no inter-router listener or connector" {
    local conf
    conf=$(configure_node 192.0.2.10 "")
    grep -qE "^ +mode: standalone$" "$conf"
    ! grep -q "inter-router" "$conf"
    ! grep -q "^connector" "$conf"
    ! grep -q "mesh" "$conf"
    [ "$(grep -c "^listener" "$conf")" = 1 ]
    [ ! -e "$AMQP1_CONF_DIR/sasl2/router-peer.password" ]
}

@test "a triangle: each pair of routers gets exactly one connector" {
    local peers="192.0.2.11 192.0.2.12 192.0.2.13"
    local node conf edges=""
    for node in 192.0.2.11 192.0.2.12 192.0.2.13; do
        stub_setup
        conf=$(configure_node "$node" "$peers")
        grep -qE "^ +mode: interior$" "$conf"
        edges+="$(connectors "$conf" | sed "s/^/$node:5673->/")"$'\n'
    done
    [ "$(echo "$edges" | sed '/^$/d' | sort)" = "192.0.2.12:5673->192.0.2.11:5673
192.0.2.13:5673->192.0.2.11:5673
192.0.2.13:5673->192.0.2.12:5673" ]
}

@test "interior: inter-router listener on AMQP1_ROUTER_INTER_PORT, authenticated with PLAIN" {
    local conf
    AMQP1_ROUTER_INTER_PORT=15673
    AMQP1_ROUTER_ID=node-b
    conf=$(configure_node 192.0.2.12 "192.0.2.11:15673 192.0.2.13:15673")
    grep -qE "^ +id: node-b$" "$conf"
    # the listener for routers follows the one for the services
    [ "$(awk '/^listener/ {l=1} l && /role:/ {print $2; l=0}' "$conf" | xargs)" = "normal inter-router" ]
    awk '/^listener/ {l=1} l && /port:/ {print $2; l=0}' "$conf" | grep -qx 15673
    [ "$(grep -cE '^ +authenticatePeer: yes$' "$conf")" = 2 ]
    [ "$(grep -cE '^ +saslMechanisms: PLAIN$' "$conf")" = 3 ]
    # one connector, to the peer before this node, logging in as the user
    [ "$(connectors "$conf")" = "192.0.2.11:15673" ]
    grep -qE "^ +role: inter-router$" "$conf"
    grep -qE "^ +saslUsername: stackrabbit$" "$conf"
    grep -qE "^ +saslPassword: file:$AMQP1_CONF_DIR/sasl2/router-peer.password$" "$conf"
    ! grep -q rabbitpw "$conf"
    [ "$(cat "$AMQP1_CONF_DIR/sasl2/router-peer.password")" = rabbitpw ]
    [ "$(stat -c %a "$AMQP1_CONF_DIR/sasl2/router-peer.password")" = 640 ]
}

@test "interior, anonymous: no credentials on the connectors" {
    local conf
    AMQP1_ANONYMOUS=True
    conf=$(configure_node 192.0.2.12 "192.0.2.11")
    [ "$(grep -cE '^ +authenticatePeer: no$' "$conf")" = 2 ]
    [ "$(connectors "$conf")" = "192.0.2.11:5673" ]
    ! grep -qE "saslUsername|saslPassword" "$conf"
}

@test "interior with TLS: the inter-router listener requires it, connectors use it" {
    local conf pki=$BATS_TEST_TMPDIR/pki
    mkdir -p "$pki"
    touch "$pki/cert.pem" "$pki/key.pem" "$pki/ca.pem"
    AMQP1_SSL=True
    AMQP1_SSL_CERT_FILE=$pki/cert.pem
    AMQP1_SSL_KEY_FILE=$pki/key.pem
    AMQP1_SSL_CA_FILE=$pki/ca.pem
    conf=$(configure_node 192.0.2.12 "192.0.2.11")
    [ "$(grep -cE '^ +requireSsl: yes$' "$conf")" = 2 ]
    [ "$(grep -cE '^ +sslProfile: amqp1-tls$' "$conf")" = 3 ]
}

@test "peers: this node, duplicates and IPv6 forms are handled; the list may be the same everywhere" {
    AMQP1_ROUTER_ADDRESS=192.0.2.12
    AMQP1_ROUTER_PEERS="192.0.2.11 192.0.2.11:5673 192.0.2.12 [2001:db8::1]:6000 router-z"
    stub_load_plugin qpid-hybrid
    [ "$(amqp1_router_connect_peers)" = "192.0.2.11 5673" ]
    AMQP1_ROUTER_ADDRESS=zz
    [ "$(amqp1_router_connect_peers | xargs)" = "192.0.2.11 5673 192.0.2.12 5673 2001:db8::1 6000 router-z 5673" ]
    [ "$(amqp1_router_split_peer '[2001:db8::1]')" = "2001:db8::1 5673" ]
    ! amqp1_router_split_peer "bus.example:99999"
    ! amqp1_router_split_peer "amqp://bus.example"
}

@test "peers with a mode without a router stop the run with what to set" {
    AMQP1_ROUTER_PEERS=192.0.2.11
    stub_load_plugin rabbit
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"AMQP1_ROUTER_PEERS is set but this host runs no router (mode rabbit, role server): set AMQP1_SERVICE=qpid-dual or qpid-hybrid and AMQP1_ROLE=server"* ]]
}

@test "a peer that is no address, or the inter-router port on the services' port, is refused" {
    AMQP1_QPIDD_BIN=$(stub_fake_binary qpidd)
    AMQP1_ROUTER_PEERS="192.0.2.11 http://x"
    stub_load_plugin qpid-dual
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"AMQP1_ROUTER_PEERS: 'http://x' is not host, host:port or [IPv6]:port"* ]]
    stub_setup
    AMQP1_ROUTER_PEERS=192.0.2.11
    AMQP1_ROUTER_INTER_PORT=5672
    stub_load_plugin qpid-dual
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"AMQP1_ROUTER_INTER_PORT and its port for the services are both 5672"* ]]
    stub_setup
    AMQP1_ROUTER_PEERS=192.0.2.11
    AMQP1_ROUTER_INTER_PORT=45672
    stub_load_plugin qpid-dual
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"AMQP1_ROUTER_INTER_PORT and AMQP1_NOTIFY_PORT (qpidd) are both 45672"* ]]
}

@test "clean removes the peers' password file" {
    configure_node 192.0.2.12 "192.0.2.11" >/dev/null
    [ -e "$AMQP1_CONF_DIR/sasl2/router-peer.password" ]
    cleanup_amqp1_router
    [ ! -e "$AMQP1_CONF_DIR/sasl2/router-peer.password" ]
}

@test "pre-install: another program on the inter-router port stops the run, naming the setting" {
    STUB_LISTENERS="5673 nc 77"
    AMQP1_ROUTER_PEERS=192.0.2.11
    stub_load_plugin qpid-hybrid
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"qdrouterd of mode qpid-hybrid must listen on port 5673, which nc (pid 77) holds: stop it, or give qdrouterd another port (AMQP1_ROUTER_INTER_PORT, the same on every node of the mesh)"* ]]
    # a router of an earlier stack there is fine; without peers, no check
    STUB_LISTENERS="5673 qdrouterd 12"
    run stub_phase stack pre-install
    [ "$status" -eq 0 ]
    stub_setup
    STUB_LISTENERS="5673 nc 77"
    stub_load_plugin qpid-hybrid
    run stub_phase stack pre-install
    [ "$status" -eq 0 ]
}
