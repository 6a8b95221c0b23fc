#!/bin/bash
# shellcheck shell=bash
#
# devstack/plugin.sh
# Phase dispatcher of devstack-plugin-amqp1: the work lives in
# devstack/lib/amqp1 (modes, URLs, overrides), devstack/lib/amqp1-tls (TLS
# files) and one file per daemon (devstack/lib/qdrouterd, devstack/lib/qpidd,
# devstack/lib/rabbitmq-amqp1).

# Dependencies:
#
# - DevStack's ``functions`` and this plugin's ``devstack/settings``, which
#   DevStack sources first and which sources every file in devstack/lib
#
# DevStack sources this file with the phase as arguments, in this order:
#
# - stack pre-install   check the settings and that the daemons can be had
# - stack install       install the driver and the daemons, configure and
#                       start them (before any OpenStack service starts)
# - stack extra         say where messaging goes; prove the bus (RPC and a
#                       notification through the driver, AMQP1_BUS_CHECK)
# - stack post-config, stack test-config  nothing
# - unstack             stop the daemons
# - clean               remove their state and what the plugin installed

# Save trace setting
_XTRACE_AMQP1_PLUGIN=$(set +o | grep xtrace)
set +o xtrace

# The phases run with the caller's xtrace (DevStack's convention: off while
# sourcing, on in functions), so their commands show in stack.sh's log
$_XTRACE_AMQP1_PLUGIN

if is_service_enabled amqp1; then
    case "$1/${2:-}" in
        stack/pre-install)
            amqp1_check_config
            ;;
        stack/install)
            install_amqp1
            configure_amqp1
            start_amqp1
            ;;
        stack/post-config|stack/test-config)
            ;;
        stack/extra)
            amqp1_summary
            if [[ $AMQP1_BUS_CHECK == True ]]; then
                # no bus-check arguments here: every check runs
                # shellcheck disable=SC2119
                amqp1_bus_check
            fi
            ;;
        unstack/*)
            stop_amqp1
            ;;
        clean/*)
            cleanup_amqp1
            ;;
    esac
fi

# Restore xtrace
$_XTRACE_AMQP1_PLUGIN

# Tell emacs to use shell-script-mode
## Local variables:
## mode: shell-script
## End:
