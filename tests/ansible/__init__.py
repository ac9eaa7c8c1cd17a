import pytest

# pytest rewrites the asserts of test modules and conftest.py only: the shared helpers' asserts
# (moved here from test modules) report their values the same way.
pytest.register_assert_rewrite("tests.ansible.ansible_helpers")
