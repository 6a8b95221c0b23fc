# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The driver's shape, as doc/architecture.rst promises it.

Classes stay under 400 lines and functions under 51, the modules import
one way (no cycles), and only addressing.py and profiles.py ask which
kind of intermediary the peer is.
"""

import ast
import pathlib

import pytest

PACKAGE = (pathlib.Path(__file__).resolve().parents[2] / 'driver' /
           'oslo_messaging_amqp1')
MAX_CLASS_LINES = 399
MAX_FUNCTION_LINES = 50
# the only modules that may name an addressing mode or a product
INTERMEDIARY_MODULES = {'addressing', 'profiles'}


def _modules() -> dict:
    return {path.stem: ast.parse(path.read_text(), str(path))
            for path in sorted(PACKAGE.glob('*.py'))}


def _sizes(kinds) -> list:
    found = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, kinds):
                found.append(('%s.%s' % (name, node.name),
                              node.end_lineno - node.lineno + 1))
    return found


def test_no_class_over_399_lines():
    sizes = _sizes(ast.ClassDef)
    assert sizes, 'no class found in %s' % PACKAGE
    assert [(n, size) for n, size in sizes if size > MAX_CLASS_LINES] == []


def test_no_function_over_50_lines():
    sizes = _sizes((ast.FunctionDef, ast.AsyncFunctionDef))
    assert [(n, size) for n, size in sizes
            if size > MAX_FUNCTION_LINES] == []


def _imports(tree) -> set:
    names = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.ImportFrom) and
                node.module == 'oslo_messaging_amqp1'):
            names.update(alias.name for alias in node.names)
    return names


def test_the_modules_import_one_way():
    graph = {name: _imports(tree) for name, tree in _modules().items()}
    assert graph['driver'] >= {'controller', 'tasks'}

    def visit(name, path):
        if name in path:
            pytest.fail('import cycle: %s' % ' -> '.join(path + [name]))
        for dep in graph.get(name, ()):
            visit(dep, path + [name])
    for name in graph:
        visit(name, [])


def test_only_profiles_and_addressing_test_the_intermediary():
    offenders = []
    for name, tree in _modules().items():
        if name in INTERMEDIARY_MODULES:
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and
                    isinstance(node.value, ast.Name) and
                    node.value.id == 'addressing' and
                    node.attr in ('RABBITMQ', 'LEGACY', 'ROUTABLE',
                                  'select_mode', 'rabbitmq_major')):
                offenders.append('%s:%s addressing.%s' % (
                    name, node.lineno, node.attr))
            if isinstance(node, ast.Constant) and node.value in (
                    'RabbitMQ', 'qpid-cpp', 'qpid-dispatch-router'):
                offenders.append('%s:%s %r' % (name, node.lineno,
                                               node.value))
    assert offenders == []
