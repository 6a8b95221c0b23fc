#!/usr/bin/env bats
#
# tests/devstack/standalone.bats
# tools/amqp1-standalone's command line: which mode it runs, --help, what
# it refuses, and where its output goes. Every run here stops at the
# settings check, before anything is installed.

REPO_DIR=$(cd "$(dirname "$BATS_TEST_FILENAME")/../.." && pwd)

setup() {
    export AMQP1_STANDALONE_DIR=$BATS_TEST_TMPDIR/standalone
    unset AMQP1_SERVICE AMQP1_VERBOSE
}

# Run the standalone with arguments $@
standalone() {
    run bash "$REPO_DIR/tools/amqp1-standalone" "$@"
}

@test "--help prints the usage and runs nothing" {
    standalone --help
    [ "$status" -eq 0 ]
    [[ ${lines[0]} == "Usage: tools/amqp1-standalone [--verbose] [MODE]" ]]
    [[ $output == *"The argument wins over AMQP1_SERVICE"* ]]
    [ ! -e "$AMQP1_STANDALONE_DIR" ]
}

@test "an unknown option or a second mode is a usage error (2)" {
    standalone --bogus
    [ "$status" -eq 2 ]
    [[ $output == *"unknown option '--bogus'; see --help"* ]]
    standalone qpid rabbit
    [ "$status" -eq 2 ]
    [[ $output == *"one mode only, got 'qpid' and 'rabbit'"* ]]
}

@test "AMQP1_SERVICE from the environment is the mode when no argument is given" {
    AMQP1_SERVICE=no-such-mode standalone
    [ "$status" -eq 1 ]
    [[ $output == *"AMQP1_SERVICE='no-such-mode' is not a mode"* ]]
}

@test "the argument wins over AMQP1_SERVICE" {
    AMQP1_SERVICE=rabbit standalone other-mode
    [ "$status" -eq 1 ]
    [[ $output == *"AMQP1_SERVICE='other-mode' is not a mode"* ]]
}

@test "a failure shows the log's last lines and keeps the whole log" {
    standalone no-such-mode
    [ "$status" -eq 1 ]
    local log=$AMQP1_STANDALONE_DIR/logs/standalone.log
    [[ $output == *"full log: $log"* ]]
    grep -q "AMQP1_SERVICE='no-such-mode' is not a mode" "$log"
    grep -qx "==> amqp1-standalone: mode no-such-mode" "$log"
}

@test "--verbose writes no log file" {
    standalone --verbose no-such-mode
    [ "$status" -eq 1 ]
    [[ $output == *"AMQP1_SERVICE='no-such-mode' is not a mode"* ]]
    [ ! -e "$AMQP1_STANDALONE_DIR/logs/standalone.log" ]
}
