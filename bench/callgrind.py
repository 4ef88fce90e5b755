#!/usr/bin/env python3
"""Instructions per event, counted by callgrind: repeatable where the pinned
benchmark's CPU time drifts with the VM (bench/README.md).

    python3 bench/callgrind.py target/release/accelerate-relay 50 550

runs the relay under `valgrind --tool=callgrind` once per count, sends that
many signed events one after another (SQLite, a mock Accelerate answering
200), waits until each is delivered, stops the relay with SIGTERM, and prints
the total and, per event (the difference between the two counts), the
relay's main stages. User-space instructions only: the kernel's share (system
calls, TCP, fsync) is not in them, and valgrind's CPU has no SHA extensions,
so SHA-256 (the signature check) costs several times what it does natively.
"""
import hashlib, hmac, http.client, http.server, os, re, signal, socketserver
import subprocess, sys, tempfile, threading, time

AUTH, SIG_KEY = "bench-authorization-key", "bench-signature-key"
STAGES = {
    "receive (webhook handler)": r"accelerate_relay::http::webhook::respond::\{\{closure\}\}",
    "  of which the event parse": r"accelerate_relay::event::parse$",
    "  of which verification": r"accelerate_relay::verify::verify$",
    "delivery attempt task": r"accelerate_relay::deliver::Worker::start::\{\{closure\}\}$",
    "delivery runtime (attempts, HTTP client)": r"tokio::runtime::scheduler::multi_thread::worker::run$",
    "SQLite writer thread": r"accelerate_relay::store::sqlite::write_loop$",
    "log lines": r"tracing_core::event::Event::dispatch$",
}


def body(i):
    return ('{"id":"evt_cg_%012d","type":"payment_approved","version":"1.0.33","created_on":"2026-11-24T14:15:22.134Z",'
            '"data":{"id":"pay_%012d","action_id":"act_y3oqhf46pyzuxjbcn2giaqnb44","amount":6540,"currency":"USD",'
            '"approved":true,"status":"Authorized","auth_code":"643381","response_code":"10000","response_summary":"Approved",'
            '"balances":{"total_authorized":6540,"total_voided":0,"available_to_void":6540,"total_captured":0,'
            '"available_to_capture":6540,"total_refunded":0,"available_to_refund":0},"source":{"id":"src_nwd3m4in3hkuddfpjsaevunhdy",'
            '"type":"card","expiry_month":6,"expiry_year":2029,"name":"Test Cardholder","scheme":"Visa","last4":"4242",'
            '"fingerprint":"F31828E2BDABAE63EB694903825CDD36041CC6ED461440B81415895855502832","bin":"424242","card_type":"CREDIT",'
            '"issuer_country":"GB"},"customer":{"id":"cus_y3oqhf46pyzuxjbcn2giaqnb44","email":"cardholder@example.com"},'
            '"processed_on":"2026-11-24T14:15:21.900Z","reference":"ORD-%d","metadata":{"AccelerateToken":"tok_acc_%024d"}},'
            '"_links":{"self":{"href":"https://api.sandbox.checkout.com/workflows/events/evt_cg_%012d"}}}'
            % (i, i, i, i, i)).encode()


def run(binary, n):
    received = [0]

    class Mock(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            received[0] += 1
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    mock = Server(("127.0.0.1", 0), Mock)
    threading.Thread(target=mock.serve_forever, daemon=True).start()
    work = tempfile.mkdtemp(prefix="relay-callgrind-")
    probe = socketserver.TCPServer(("127.0.0.1", 0), None)
    port = probe.server_address[1]
    probe.server_close()
    env = dict(PATH=os.environ["PATH"], CKO_SANDBOX_AUTHORIZATION_KEY=AUTH, CKO_SANDBOX_SIGNATURE_KEY=SIG_KEY,
               RELAY_LISTEN="127.0.0.1:%d" % port, RELAY_DATABASE_URL="sqlite://%s/relay.db" % work,
               ACCELERATE_SANDBOX_URL="http://127.0.0.1:%d/webhooks" % mock.server_address[1])
    out = "%s/callgrind.out" % work
    with open("%s/relay.log" % work, "w") as log:
        relay = subprocess.Popen(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out, binary],
                                 env=env, stdout=log, stderr=log)
        for _ in range(600):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for i in range(n):
            b = body(i)
            c.request("POST", "/webhooks/checkoutdotcom/sandbox", body=b, headers={
                "authorization": AUTH, "content-type": "application/json",
                "cko-signature": hmac.new(SIG_KEY.encode(), b, hashlib.sha256).hexdigest()})
            r = c.getresponse()
            r.read()
            assert r.status == 200, r.status
        deadline = time.time() + 120
        while received[0] < n and time.time() < deadline:
            time.sleep(0.05)
        assert received[0] == n, "delivered %d of %d" % (received[0], n)
        relay.send_signal(signal.SIGTERM)
        relay.wait()
    annotated = subprocess.run(["callgrind_annotate", "--inclusive=yes", out],
                               capture_output=True, text=True).stdout
    costs = {}
    for name, pattern in STAGES.items():
        for line in annotated.splitlines():
            m = re.match(r"\s*([\d,]+) \(.*?\)\s+\S*?:(.*) \[", line)
            if m and re.search(pattern, m.group(2)):
                costs[name] = int(m.group(1).replace(",", ""))
                break
    total = int(re.search(r"^totals: (\d+)", open(out).read(), re.M).group(1))
    return total, costs


def main():
    binary, low, high = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    (t0, c0), (t1, c1) = run(binary, low), run(binary, high)
    events = high - low
    print("%s: %d events -> %d instructions, %d events -> %d" % (binary, low, t0, high, t1))
    print("per event, all threads: %.1fk (includes the checkpointer's timer, which runs by the clock)"
          % ((t1 - t0) / events / 1000))
    for name in STAGES:
        if name in c0 and name in c1:
            print("  %-42s %7.1fk" % (name, (c1[name] - c0[name]) / events / 1000))


if __name__ == "__main__":
    main()
