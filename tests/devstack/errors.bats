#!/usr/bin/env bats
#
# tests/devstack/errors.bats
# Bad settings and missing daemons stop the run at "stack pre-install",
# before anything is installed, with a message that says what to set.

load stub-devstack

setup() {
    stub_setup
}

@test "an unknown mode names the modes" {
    stub_load_plugin qpid-cluster
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"AMQP1_SERVICE='qpid-cluster' is not a mode: set AMQP1_SERVICE to one of: rabbit qpid qpid-dual qpid-hybrid external"* ]]
}

@test "external without URLs asks for AMQP1_RPC_TRANSPORT_URL" {
    stub_load_plugin external
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"set AMQP1_RPC_TRANSPORT_URL"* ]]
}

@test "a URL that is not amqp:// or rabbit:// is refused" {
    AMQP1_RPC_TRANSPORT_URL=kafka://bus.example:9092/
    stub_load_plugin external
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"AMQP1_RPC_TRANSPORT_URL='kafka://bus.example:9092/' is not an amqp:// or rabbit:// URL: set AMQP1_RPC_TRANSPORT_URL to amqp://"* ]]
}

@test "a bad notification URL is refused too" {
    AMQP1_RPC_TRANSPORT_URL=amqp://bus.example:5672/
    AMQP1_NOTIFY_TRANSPORT_URL=bus.example:5672
    stub_load_plugin external
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"AMQP1_NOTIFY_TRANSPORT_URL='bus.example:5672' is not an amqp:// or rabbit:// URL"* ]]
}

@test "URL variables outside the external mode are refused" {
    AMQP1_RPC_TRANSPORT_URL=amqp://bus.example:5672/
    stub_load_plugin rabbit
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"only used with AMQP1_SERVICE=external: set AMQP1_SERVICE=external or unset them"* ]]
}

@test "external with valid URLs passes and installs no daemon" {
    AMQP1_RPC_TRANSPORT_URL=amqp://u:p@bus.example:5672/
    stub_load_plugin external
    run stub_phase stack pre-install
    [ "$status" -eq 0 ]
    [ "$(amqp1_daemons)" = "" ]
    ! is_service_enabled rabbit
}

@test "qpid-dual with equal RPC and notify ports is a port clash" {
    AMQP1_NOTIFY_PORT=5672
    stub_load_plugin qpid-dual
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"AMQP1_DEFAULT_PORT and AMQP1_NOTIFY_PORT are both 5672: set AMQP1_NOTIFY_PORT to another port"* ]]
}

@test "qpid-hybrid with the router on RabbitMQ's port is a port clash" {
    AMQP1_DEFAULT_PORT=5672
    stub_load_plugin qpid-hybrid
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"AMQP1_DEFAULT_PORT and AMQP1_RABBIT_PORT are both 5672: set AMQP1_DEFAULT_PORT to another port"* ]]
}

@test "a port that is not a number is refused" {
    AMQP1_NOTIFY_PORT=notify
    stub_load_plugin qpid-dual
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"AMQP1_NOTIFY_PORT='notify' is not a TCP port"* ]]
}

@test "a username without a password asks for AMQP1_PASSWORD" {
    AMQP1_USERNAME=amqp
    AMQP1_QPIDD_BIN=$(stub_fake_binary qpidd)
    stub_load_plugin qpid
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"AMQP1_USERNAME=amqp has no password: set AMQP1_PASSWORD"* ]]
}

@test "rabbit: a user of its own without a password is refused" {
    AMQP1_USERNAME=amqp
    stub_load_plugin rabbit
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"set AMQP1_PASSWORD"* ]]
}

@test "rabbit: DevStack's user without RABBIT_PASSWORD is refused" {
    RABBIT_PASSWORD=""
    stub_load_plugin rabbit
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"AMQP1_USERNAME=stackrabbit has no password"* ]]
}

@test "rabbit: DevStack's user with another password is refused" {
    AMQP1_PASSWORD=other
    stub_load_plugin rabbit
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"unset AMQP1_PASSWORD or choose another AMQP1_USERNAME"* ]]
}

@test "a password without a username is refused" {
    AMQP1_ANONYMOUS=True
    AMQP1_PASSWORD=secret
    AMQP1_QPIDD_BIN=$(stub_fake_binary qpidd)
    stub_load_plugin qpid
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"set AMQP1_USERNAME too"* ]]
}

@test "AMQP1_ANONYMOUS=True with a user is refused, naming both" {
    AMQP1_ANONYMOUS=True
    AMQP1_USERNAME=amqp AMQP1_PASSWORD=secret
    AMQP1_QPIDD_BIN=$(stub_fake_binary qpidd)
    stub_load_plugin qpid
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"AMQP1_ANONYMOUS=True but AMQP1_USERNAME=amqp is set: unset one of them"* ]]
}

@test "AMQP1_ANONYMOUS other than True/False is refused" {
    AMQP1_ANONYMOUS=yes
    AMQP1_QPIDD_BIN=$(stub_fake_binary qpidd)
    stub_load_plugin qpid
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"AMQP1_ANONYMOUS=yes: set it to True or False"* ]]
}

@test "AMQP1_ANONYMOUS=True in rabbit mode is refused" {
    AMQP1_ANONYMOUS=True
    stub_load_plugin rabbit
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"RabbitMQ has no anonymous AMQP 1.0 access here: unset AMQP1_ANONYMOUS"* ]]
}

@test "rabbit mode with DevStack's rabbit disabled asks to enable it" {
    stub_load_plugin rabbit
    disable_service rabbit
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"enable_service rabbit"* ]]
}

@test "an unknown router is refused" {
    AMQP1_ROUTER=nginx
    stub_load_plugin qpid-dual
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"set AMQP1_ROUTER=qdrouterd or AMQP1_ROUTER=skrouterd"* ]]
}

@test "missing daemons: ONE message with distro, what is missing and the ways out" {
    stub_load_plugin qpid-dual
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [ "$(grep -c ERROR <<< "$output")" -eq 1 ]
    [[ $output == *"AMQP1_SERVICE=qpid-dual cannot run on Debian 12: missing qdrouterd (no package among: qpid-dispatch-router qdrouterd; AMQP1_QDROUTERD_BIN unset; not on PATH); qpidd (no package among: qpid-cpp-server qpidd; AMQP1_QPIDD_BIN unset; not on PATH)."* ]]
    [[ $output == *"add a package repository"* ]]
    [[ $output == *"set AMQP1_QDROUTERD_BIN=/path/to/qdrouterd AMQP1_QPIDD_BIN=/path/to/qpidd"* ]]
    [[ $output == *"AMQP1_SERVICE=rabbit"* ]]
    [[ $output == *"AMQP1_SERVICE=external"* ]]
    [ -z "$(stub_calls '^install_package')" ]
}

@test "missing skrouterd names skupper-router and AMQP1_SKROUTERD_BIN" {
    AMQP1_ROUTER=skrouterd
    stub_load_plugin qpid-hybrid
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"missing skrouterd (no package among: skupper-router; AMQP1_SKROUTERD_BIN unset; not on PATH)"* ]]
}

@test "a binary variable that is not executable is named" {
    AMQP1_QPIDD_BIN=/nonexistent/qpidd
    stub_load_plugin qpid
    run stub_phase stack pre-install
    [ "$status" -ne 0 ]
    [[ $output == *"qpidd (AMQP1_QPIDD_BIN=/nonexistent/qpidd is not an executable file)"* ]]
}

@test "the missing-daemon check also stops stack install" {
    stub_load_plugin qpid
    run stub_phase stack install
    [ "$status" -ne 0 ]
    [[ $output == *"missing qpidd"* ]]
    [ -z "$(stub_calls '^(install_package|run_process)')" ]
}

@test "daemons are found: a package, a binary variable, PATH" {
    STUB_APT_PACKAGES="qpidd"
    stub_load_plugin qpid
    [ "$(amqp1_daemon_source qpidd AMQP1_QPIDD_BIN qpid-cpp-server qpidd)" = "package:qpidd" ]
    STUB_APT_PACKAGES=""
    local fake
    fake=$(stub_fake_binary qpidd)
    [ "$(amqp1_daemon_source qpidd AMQP1_QPIDD_BIN qpid-cpp-server qpidd)" = "path:$fake" ]
    AMQP1_QPIDD_BIN=/opt/qpid/sbin/qpidd
    [ "$(amqp1_daemon_source qpidd AMQP1_QPIDD_BIN qpid-cpp-server qpidd)" = "var:/opt/qpid/sbin/qpidd" ]
}

@test "a valid configuration passes pre-install without side effects" {
    stub_load_plugin rabbit
    run stub_phase stack pre-install
    [ "$status" -eq 0 ]
    [ -z "$(stub_calls '^(install_package|pip_install|run_process|rabbitmq)')" ]
}
