"""The strict readers of the receiver, one by one: the raw request target,
numbers in headers, JSON, header parameters and the end of a request head.
(test_hostile_strict.py sends the same classes to the real receiver.)"""

import io

import falcon
import pytest

from dropr.errors import ValidationError
from dropr.receiver.multipart import FormReader, boundary_of, parameters
from dropr.receiver.strict import check_target, exact_int, header_number, load_json
from dropr.receiver.worker import head_complete


@pytest.mark.parametrize("target", [
    "/v1/batch", "/v1/channels/orders/messages?x=%2F", "/v1/channels/%2e%2e/messages",
    "http://127.0.0.1:8080/v1/batch", "/v1/channels/%41/messages",
])
def test_targets_without_encoded_separators_pass(target):
    check_target(target)


@pytest.mark.parametrize("target, says", [
    ("/v1%2Fbatch", "encoded '/'"), ("/v1%2fbatch", "encoded '/'"),
    ("/v1/channels/a%5cb/messages", "encoded '\\\\'"), ("/v1/x%3By", "encoded ';'"),
    ("/v1/x%3Fy", "encoded '?'"), ("/v1/x%23y", "encoded '#'"), ("/v1/x%252F", "encoded '%'"),
    ("/v1\\batch", "backslash"), ("//v1/batch", "empty segment"), ("/v1//batch", "empty segment"),
    ("http://host//v1/batch", "empty segment"), ("http://host/v1%2Fbatch", "encoded '/'"),
])
def test_targets_with_encoded_separators_are_refused(target, says):
    with pytest.raises(ValidationError, match=says.replace("\\", "\\\\").replace("?", "\\?")):
        check_target(target)


@pytest.mark.parametrize("value, number", [("5", 5), (" 5", 5), ("5\t", 5), (" \t007 ", 7)])
def test_header_numbers_take_ascii_digits_and_http_whitespace(value, number):
    assert header_number(value, "Dropr-Priority", 3) == number


@pytest.mark.parametrize("value", [
    "", " ", "\xa05", "5\xa0", "\u30005", "+5", "-5", "5_0", "0x5", "5 5", "1,2", "²", "٥",
    "５", "5\n", "1234",
])
def test_header_numbers_refuse_anything_else(value):
    with pytest.raises(ValidationError, match="Dropr-Priority must be a number of at most 3"):
        header_number(value, "Dropr-Priority", 3)


def test_json_refuses_duplicate_keys_at_any_depth():
    assert load_json('{"a": {"b": 1}, "c": [{"b": 2}]}', "meta") == {"a": {"b": 1},
                                                                       "c": [{"b": 2}]}
    for text in ('{"a": 1, "a": 1}', '{"x": [{"b": 1, "b": 2}]}', '{"a": 1, "\\u0061": 2}'):
        with pytest.raises(ValidationError, match="meta has the key '[ab]' more than once"):
            load_json(text, "meta")


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a": -Infinity}'])
def test_json_refuses_what_is_not_json(text):
    with pytest.raises(ValidationError, match="not a JSON number"):
        load_json(text, "meta")


def test_exact_int_is_a_json_integer_only():
    assert [exact_int(v) for v in (0, 5, -1, True, False, 5.0, "5", None)] == [
        True, True, True, False, False, False, False, False]


@pytest.mark.parametrize("value, params", [
    ('form-data; name="A"; filename="a.bin"', {"name": "A", "filename": "a.bin"}),
    ("FORM-DATA;name=A", {"name": "A"}),
    ('form-data; name="A";', {"name": "A"}),
    ("form-data;; name=A", {"name": "A"}),
    ('form-data; name="a;b"', {"name": "a;b"}),
    ('form-data; name="A"\t; filename=b  ', {"name": "A", "filename": "b"}),
])
def test_parameters_are_read_as_rfc_9110_writes_them(value, params):
    assert parameters(value, "form-data", "it") == params


@pytest.mark.parametrize("value, says", [
    ("attachment; name=A", "must be form-data"),
    ("form-data; name=A; NAME=B", "'name' more than once"),
    ('form-data; name="A', "unclosed quote"),
    ('form-data; name="A\\"B"', "backslash"),
    ('form-data; name="A\rB"', "control character"),
    ('form-data; name="A" x', "something after"),
    ("form-data; name=A B", "neither a token nor quoted"),
    ("form-data; name=", "neither a token nor quoted"),
    ("form-data; =x", "not name=value"),
    ("form-data; name = A", "not name=value"),
    ("form-data; name", "not name=value"),
])
def test_parameters_refuse_what_rfc_9110_does_not_allow(value, says):
    with pytest.raises(falcon.HTTPBadRequest) as refused:
        parameters(value, "form-data", "it")
    assert says in refused.value.description


@pytest.mark.parametrize("content_type, boundary", [
    ("multipart/form-data; boundary=abc", b"abc"),
    ('multipart/form-data; boundary="a b:c?=d"', b"a b:c?=d"),
    ("Multipart/Form-Data; charset=utf-8; boundary=" + "x" * 70, b"x" * 70),
])
def test_boundaries_of_rfc_2046(content_type, boundary):
    assert boundary_of(content_type) == boundary


@pytest.mark.parametrize("content_type", [
    "multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary=a@b",
    'multipart/form-data; boundary="a@b"', 'multipart/form-data; boundary="a "',
    'multipart/form-data; boundary="a"b"', 'multipart/form-data; boundary="ab',
    "multipart/form-data; boundary=a; boundary=a", "multipart/form-datax; boundary=a",
    "multipart/form-data; boundary=" + "x" * 71, 'multipart/form-data; boundary="é"',
])
def test_boundaries_outside_rfc_2046_are_refused(content_type):
    with pytest.raises(falcon.HTTPBadRequest):
        boundary_of(content_type)


@pytest.mark.parametrize("head, complete", [
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True), (b"GET / HTTP/1.1\n\n", True),
    (b"GET / HTTP/1.1\r\nHost: a\r\n", False), (b"GET / HTTP/1.1\r\n", False), (b"", False),
])
def test_the_end_of_a_request_head(head, complete):
    assert head_complete(head) is complete
    # Found also when it arrives a byte at a time.
    assert any(head_complete(head[:i + 1], i) for i in range(len(head))) is complete


@pytest.mark.parametrize("headers", [
    b'Content-Disposition: form-data; name="m-1"; filename="m-1"\r\n'
    b'Content-Type: application/octet-stream\r\n\r\n',
    b'content-disposition: form-data; name="m-1"; filename="m-1"\r\n'
    b'Content-Type: application/octet-stream\r\n\r\n',
    b'Content-Disposition: form-data; name="m-1"; filename="m-2"\r\n'
    b'Content-Type: application/octet-stream\r\n\r\n',
    b'Content-Disposition: form-data; name="m.1"; filename="m.1"\r\n'
    b'Content-Type: application/octet-stream\r\n\r\n',
    b'Content-Disposition: form-data; name="m-1"; filename="m-1"\r\n'
    b'Content-Type: application/octet-stream\r\nX-More: 1\r\n\r\n',
    b'Content-Disposition: form-data; name="m-1"; filename="m-1"\r\n\r\n',
])
def test_a_part_read_by_exact_comparison_reads_as_line_by_line(headers):
    body = b"--b\r\n" + headers + b"body\r\n--b--\r\n"
    usual = FormReader(io.BytesIO(body).read, b"b")
    (part,) = [(p._headers, p.name, p.stream.read()) for p in usual.parts()]
    general = FormReader(io.BytesIO(body).read, b"b")
    general._usual_headers = lambda: None  # line by line only
    assert [(p._headers, p.name, p.stream.read()) for p in general.parts()] == [part]
