#!/usr/bin/python3
"""Helpers of tests/deploy/run.sh: the repo's nginx and Prometheus configs
turned into loopback ones, and nginx's access log summed up.

  configs.py nginx SRC OUT LISTEN_PORT PREFIX PORT1 PORT2 PORT3
  configs.py prometheus SRC OUT TARGET1 TARGET2 TARGET3
  configs.py nginx-log ACCESS_LOG       -> "requests non-200 retried why"
"""
import json
import os
import re
import sys

import yaml


def nginx(src, out, listen, prefix, *ports):
    """Only addresses change: the upstream servers finc-N:8080 become the
    loopback replicas, `listen 8080` a loopback port; `resolve` goes (nginx
    before 1.27.3 lacks it, and an IP address needs no lookup). Temp paths
    under PREFIX let nginx run outside its installed layout."""
    text = open(src).read()
    n_server = 0

    def server(m):
        nonlocal n_server
        n_server += 1
        params = m.group(3).replace(" resolve", "")
        return f"{m.group(1)}127.0.0.1:{ports[int(m.group(2)) - 1]}{params};"

    text = re.sub(r"^(\s*server\s+)finc-([1-3]):8080([^;]*);", server, text, flags=re.M)
    text, n_listen = re.subn(r"^(\s*)listen\s+8080;", rf"\g<1>listen 127.0.0.1:{listen};", text, flags=re.M)
    temp = "".join(f"    {d}_temp_path {prefix}/{d}_temp;\n"
                   for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    text, n_http = re.subn(r"^http \{\n", "http {\n" + temp, text, flags=re.M)
    if (n_server, n_listen, n_http) != (3, 1, 1):
        sys.exit(f"{src}: expected 3 upstream servers finc-N:8080, one 'listen 8080;' and one http block; "
                 f"found {n_server}, {n_listen}, {n_http}")
    open(out, "w").write(text)


def prometheus(src, out, *targets):
    """The finc job's targets become the loopback replicas; intervals 1 s."""
    cfg = yaml.safe_load(open(src))
    cfg["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    jobs = [j for j in cfg["scrape_configs"] if j["job_name"] == "finc"]
    if len(jobs) != 1 or len(jobs[0]["static_configs"]) != 1 or len(jobs[0]["static_configs"][0]["targets"]) != 3:
        sys.exit(f"{src}: expected one job 'finc' with one static_configs entry of 3 targets")
    jobs[0]["static_configs"][0]["targets"] = list(targets)
    # rule files are relative to the config, which moves
    here = os.path.dirname(os.path.abspath(src))
    cfg["rule_files"] = [os.path.join(here, r) for r in cfg.get("rule_files", [])]
    yaml.safe_dump(cfg, open(out, "w"))


def nginx_log(path):
    """Inference requests, those answered other than 200, those that nginx
    sent to another replica, and the failed tries' statuses (502: refused or
    cut off; 503: draining or queue full)."""
    total = non200 = retried = 0
    why = {}
    for line in open(path):
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e["uri"].split("?")[0] not in ("/sample", "/log-likelihood"):
            continue
        total += 1
        non200 += e["status"] != 200
        tries = [t.strip() for t in e["upstream_status"].split(",")]
        retried += len(tries) > 1
        for t in tries[:-1]:
            why[t] = why.get(t, 0) + 1
    print(total, non200, retried, ",".join(f"{k}x{v}" for k, v in sorted(why.items())) or "-")


if __name__ == "__main__":
    cmds = {"nginx": (nginx, 7), "prometheus": (prometheus, 5), "nginx-log": (nginx_log, 1)}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds or len(sys.argv) - 2 != cmds[sys.argv[1]][1]:
        sys.exit(__doc__)
    cmds[sys.argv[1]][0](*sys.argv[2:])
