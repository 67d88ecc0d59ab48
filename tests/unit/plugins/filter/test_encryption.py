"""Unit tests of plugins/filter/encryption.py: which stored Secrets a key rotation must still rewrite, and
the name of the next key."""

import base64

from plugins.filter.encryption import encryption_next_key_name, encryption_stale_keys


def kv(key, value):
    return {"key": base64.b64encode(key.encode()).decode(), "value": base64.b64encode(value).decode()}


def test_only_values_under_the_named_key_of_the_provider_are_current():
    kvs = [kv("/registry/secrets/default/new", b"k8s:enc:secretbox:v1:gpuops-2:\x00\xffciphertext"),
           kv("/registry/secrets/default/old", b"k8s:enc:secretbox:v1:gpuops-1:\x00\xffciphertext"),
           kv("/registry/secrets/kube-system/plain", b"k8s\x00\n\x0c\n\x02v1\x12\x06Secret"),
           kv("/registry/secrets/serving/aescbc", b"k8s:enc:aescbc:v1:gpuops-2:ciphertext"),
           # a name that only starts like the current one is another key
           kv("/registry/secrets/serving/longer", b"k8s:enc:secretbox:v1:gpuops-22:ciphertext")]
    assert encryption_stale_keys(kvs, "secretbox", "gpuops-2") == [
        "/registry/secrets/default/old", "/registry/secrets/kube-system/plain",
        "/registry/secrets/serving/aescbc", "/registry/secrets/serving/longer"]


def test_every_value_current_and_an_empty_range_leave_nothing_stale():
    kvs = [kv("/registry/secrets/a/%d" % i, b"k8s:enc:secretbox:v1:k:%d" % i) for i in range(3)]
    assert encryption_stale_keys(kvs, "secretbox", "k") == []
    assert encryption_stale_keys([], "secretbox", "k") == []
    assert encryption_stale_keys(None, "secretbox", "k") == []


def test_a_value_that_is_not_base64_counts_as_stale():
    kvs = [{"key": base64.b64encode(b"/registry/secrets/a/b").decode(), "value": "not base64!"}, kv("/r/s/a/b", b"x")]
    assert encryption_stale_keys(kvs, "secretbox", "k") == ["/r/s/a/b", "/registry/secrets/a/b"]


def test_the_next_key_name_counts_up_and_never_equals_the_current_one():
    assert encryption_next_key_name("gpuops-1") == "gpuops-2"
    assert encryption_next_key_name("gpuops-9") == "gpuops-10"
    assert encryption_next_key_name("site-key-41") == "site-key-42"
    assert encryption_next_key_name("site-key") == "site-key-2"
    assert encryption_next_key_name("") == "gpuops-2"
    for name in ["gpuops-1", "a", "a-b", "x-0"]:
        assert encryption_next_key_name(name) != name
