#!/usr/bin/env python3
"""What cluster mode costs the API: start+stop pairs per second and their latency (p50, p99),
through one node of a 3-node cluster on a 3-server NATS JetStream cluster (R3 buckets), against
one node without a cluster, in one run on one machine.

Each worker thread loops: POST /recordings/start (a new conversation), then POST .../stop of the
instance it made, until --seconds pass. Starts go through node A; placement sends them to any
node, and the stop through A is forwarded to the owner over NATS. Everything on loopback.

usage: scripts/bench-cluster.py [--seconds 20] [--workers 8] [--debug]
(release build unless --debug; scripts/test-services.sh start installs nats-server)
"""
import argparse, hashlib, json, os, shutil, socket, statistics, subprocess, sys, tempfile, threading, time
import urllib.error, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = "/auvious.video/rtc-recorder/api"
KEY = "bench-key-0123456789abcdef"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def services_env():
    path = os.environ.get("RTC_SERVICES_ENV") or os.path.join(
        os.environ.get("RTC_SERVICES_DIR", os.path.expanduser("~/.cache/rtc-recorder/services")), "env")
    return dict(line.strip().split("=", 1) for line in open(path) if "=" in line)


def wait_port(port, secs=30):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def start_nats(binary, work, n=3):
    ports = [(free_port(), free_port()) for _ in range(n)]
    routes = ", ".join(f'"nats-route://127.0.0.1:{r}"' for _, r in ports)
    procs = []
    for i, (client, route) in enumerate(ports):
        store = os.path.join(work, f"nats-{i}")
        os.makedirs(store)
        conf = os.path.join(work, f"nats-{i}.conf")
        with open(conf, "w") as f:
            f.write(f'server_name: n{i}\nlisten: 127.0.0.1:{client}\njetstream {{ store_dir: "{store}" }}\n'
                    f'cluster {{ name: bench, listen: 127.0.0.1:{route}, routes: [{routes}] }}\n')
        procs.append(subprocess.Popen([binary, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for client, _ in ports:
        wait_port(client)
    return procs, [f"nats://127.0.0.1:{c}" for c, _ in ports]


def start_node(binary, work, name, nats_urls):
    root = os.path.join(work, name)
    os.makedirs(root)
    port = free_port()
    config = os.path.join(root, "config.toml")
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    with open(config, "w") as f:
        f.write(f'bind = "127.0.0.1:{port}"\ndata_dir = "{root}/data"\nrecorder_id = "{name}"\n'
                f'[signing]\nsecret = "bench-shared-signing-secret-0123456789"\n'
                f'[composition]\nenabled = false\n'
                f'[capacity]\nmax_cpu_percent = 0\n'
                f'[limits]\nmax_live_instances_per_organization = 100000\n')
        if nats_urls:
            urls = ", ".join(f'"{u}"' for u in nats_urls)
            f.write(f'[cluster]\nenabled = true\nnats_urls = [{urls}]\nreplicas = 3\nname = "bench_{int(time.time())}"\n')
        f.write(f'[api_keys.bench]\nhash = "sha256:{digest}"\norganization = "default"\n'
                f'applications = ["*"]\nscopes = ["global", "admin"]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
    env.update(RECORDER_CONFIG=config, RECORDER_LOG="error")
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, f"http://127.0.0.1:{port}"


def call(method, url, body=None):
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", KEY)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def wait_cluster(url, nodes):
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            body = json.loads(e.read() or b"{}")
        except OSError:
            body = {}
        cluster = body.get("cluster", {})
        if cluster.get("connected") and cluster.get("nodes") == nodes:
            return
        time.sleep(0.2)
    raise SystemExit(f"{url} did not see {nodes} nodes")


def run(url, seconds, workers, tag):
    latencies, errors, lock = [], [], threading.Lock()
    stop_at = time.time() + seconds

    def worker(w):
        i = 0
        while time.time() < stop_at:
            conv = f"{tag}-{w}-{i}"
            i += 1
            t0 = time.perf_counter()
            status, event = call("POST", url + BASE + "/recordings/start", json.dumps(
                {"applicationId": "default", "conversationId": conv, "conferenceId": "room-" + conv}).encode())
            if status != 200:
                with lock:
                    errors.append(f"start {status} {event}")
                continue
            path = f"{BASE}/recordings/{conv}/{event['recorderId']}/{event['instanceId']}/stop"
            status, stopped = call("POST", url + path)
            dt = time.perf_counter() - t0
            with lock:
                if status == 200:
                    latencies.append(dt)
                else:
                    errors.append(f"stop {status} {stopped}")

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    return {
        "pairs": len(latencies),
        "per_second": len(latencies) / seconds,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--debug", action="store_true")
    args = ap.parse_args()
    profile = [] if args.debug else ["--release"]
    subprocess.run(["cargo", "build", "-q", "--bin", "rtc-recorder"] + profile, cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    binary = os.path.join(target, "debug" if args.debug else "release", "rtc-recorder")
    nats_bin = os.environ.get("RTC_NATS_SERVER") or services_env()["RTC_NATS_SERVER_BIN"]
    work = tempfile.mkdtemp(prefix="rtc-bench-cluster-")
    procs = []
    try:
        single, single_url = start_node(binary, work, "single", None)
        procs.append(single)
        single_result = run(single_url, args.seconds, args.workers, "single")
        single.terminate()
        single.wait()
        nats, urls = start_nats(nats_bin, work)
        procs.extend(nats)
        nodes = [start_node(binary, work, f"node-{x}", urls) for x in "abc"]
        procs.extend(p for p, _ in nodes)
        for _, url in nodes:
            wait_cluster(url, 3)
        cluster_result = run(nodes[0][1], args.seconds, args.workers, "cluster")
        print(json.dumps({
            "machine": f"{os.cpu_count()} cpus",
            "build": "debug" if args.debug else "release",
            "seconds": args.seconds,
            "workers": args.workers,
            "single_node": single_result,
            "cluster_3_nodes_r3": cluster_result,
            "throughput_ratio": (cluster_result["per_second"] / single_result["per_second"])
            if single_result["per_second"] else None,
        }, indent=2))
    finally:
        for p in procs:
            p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
