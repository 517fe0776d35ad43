import io
def test_upload(client):
    f = client.files.create(file=("a.jsonl", io.BytesIO(b'{"x":1}\n')), purpose="batch")
    assert f.bytes == 8
