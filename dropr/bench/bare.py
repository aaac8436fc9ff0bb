"""The yardstick beside the plain POST figure: a falcon app that reads the
body and answers 201 with the receiver's JSON, storing nothing. The bench
serves it with gunicorn's stock gthread worker, the receiver's worker and
thread counts, in the same run as the receiver."""

import falcon


class _Messages:
    def on_post(self, req, resp, channel):
        req.bounded_stream.read()
        resp.status = falcon.HTTP_201
        resp.media = {"id": "x", "channel": channel, "status": "stored"}


app = falcon.App()
app.add_route("/v1/channels/{channel}/messages", _Messages())
