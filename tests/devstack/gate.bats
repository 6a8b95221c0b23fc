#!/usr/bin/env bats
#
# tests/devstack/gate.bats
# The plugin as a Zuul gate job meets it: checked out under the
# repository's name (or the short one of the seed guide), and the job
# definitions in zuul.d/.

load stub-devstack

# The Python of the test run (stub_setup puts a stand-in first on PATH)
REAL_PYTHON=$(command -v python3)

setup() {
    stub_setup
}

# Copy the plugin's files into a checkout named $1 under DEST; print it
checkout_as() {
    local dir=$DEST/$1
    mkdir -p "$dir/tools"
    cp -r "$PLUGIN_DIR/devstack" "$dir/"
    cp "$PLUGIN_DIR/tools/bus-check" "$dir/tools/"
    echo "$dir"
}

# Print, one per line, what Python expression $1 gives over the jobs
# (a dict by name) and the project stanza of zuul.d/
zuul() {
    "$REAL_PYTHON" - "$PLUGIN_DIR/zuul.d" "$1" <<'PY'
import glob, os, sys, yaml
jobs, project = {}, {}
for path in sorted(glob.glob(os.path.join(sys.argv[1], '*.yaml'))):
    for item in yaml.safe_load(open(path)) or []:
        if 'job' in item:
            jobs[item['job']['name']] = item['job']
        if 'project' in item:
            project = item['project']
for line in eval(sys.argv[2]):
    print(line)
PY
}

@test "the plugin runs from a checkout named after the repository or amqp1" {
    local name dir
    for name in devstack-plugin-amqp1 amqp1; do
        stub_setup
        dir=$(checkout_as "$name")
        AMQP1_SERVICE=rabbit
        # shellcheck source=devstack/settings
        source "$dir/devstack/settings"
        [ "$AMQP1_DIR" = "$dir" ]
        source "$dir/devstack/plugin.sh" stack extra
        grep -qx "python $dir/tools/bus-check --config-file $DATA_DIR/amqp1/bus-check.conf" "$STUB_LOG"
        source "$dir/devstack/plugin.sh" stack install
        grep -qx "setup_develop $dir" "$STUB_LOG"
    done
}

@test "zuul: devstack_plugins keys are the repository's name (Zuul's checkout)" {
    local keys
    keys=$(zuul "[k + ' ' + v for j in jobs.values() for k, v in j.get('vars', {}).get('devstack_plugins', {}).items()]")
    [ -n "$keys" ]
    while read -r key url; do
        [ "$key" = "${url##*/}" ]
    done <<< "$keys"
}

@test "zuul: the plugin's repository is a required project of its DevStack jobs" {
    zuul "[p for j in jobs.values() for p in j.get('required-projects', [])]" |
        grep -qx openstack/devstack-plugin-amqp1
}

@test "zuul: check and gate run only jobs that can pass on a stock node" {
    local job
    for job in $(zuul "project['check']['jobs'] + project['gate']['jobs']"); do
        [[ $job != *qpid* ]]
    done
    [ "$(zuul "project['experimental']['jobs']" | sort | tr '\n' ' ')" = \
        "devstack-plugin-amqp1-tempest-qpid-dual devstack-plugin-amqp1-tempest-qpid-hybrid " ]
}

@test "zuul: every job a pipeline names is defined; experimental ones say what they need" {
    local job count=0
    for job in $(zuul "[j for p in ('check', 'gate', 'experimental') for j in project[p]['jobs']]"); do
        [[ $job == openstack-* ]] && continue
        [ -n "$(zuul "[n for n in jobs if n == '$job']")" ]
        count=$((count + 1))
    done
    [ "$count" -ge 4 ]
    for job in $(zuul "project['experimental']['jobs']"); do
        zuul "[jobs['$job']['description']]" | grep -q "_BIN"
    done
}

@test "zuul: the Tempest jobs run more than smoke" {
    [ "$(zuul "[jobs['devstack-plugin-amqp1-tempest-base']['vars']['tox_envlist']]")" = full ]
}

@test "zuul: the multinode job runs two nodes, the subnode without a bus of its own" {
    local job=devstack-plugin-amqp1-tempest-rabbit-multinode
    zuul "project['check']['jobs']" | grep -qx "$job"
    [[ $(zuul "[jobs['$job']['nodeset']]") == openstack-two-node-* ]]
    [ "$(zuul "[jobs['$job']['group-vars']['subnode']['devstack_localrc']['AMQP1_SERVICE']]")" = rabbit ]
    # the plugin's client role needs the subnode without DevStack's rabbit
    [ -z "$(zuul "[s for s, on in jobs['$job']['group-vars']['subnode']['devstack_services'].items() if on and s in ('rabbit', 'amqp1-router', 'amqp1-qpidd')]")" ]
    zuul "[s for s, on in jobs['$job']['group-vars']['subnode']['devstack_services'].items() if on]" | grep -qx n-cpu
}
