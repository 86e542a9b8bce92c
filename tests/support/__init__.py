"""Shared helpers of the test suites (tests.support.kube: cluster access and wait_for)."""
