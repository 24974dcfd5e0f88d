#!/usr/bin/python3
"""Checks of deploy/ and the Dockerfile that no validator in Debian makes
(tests/deploy/validate.sh runs the ones that exist: yamllint, docker-compose
config, promtool, nginx -t, kubectl kustomize, shellcheck).

  check_config.py k8s CPU.yaml GPU.yaml   rendered kustomize output (base, gpu overlay)
  check_config.py compose                 compose.yaml, nginx.conf, prometheus.yml together
  check_config.py dockerfile              Dockerfile and .dockerignore
  check_config.py context DEST            copy the docker build context to DEST
  check_config.py apt-packages STAGE      the packages a Dockerfile stage apt-get installs
  check_config.py render DIR OUT.yaml     kustomize's output for deploy/k8s or deploy/k8s/gpu,
                                          where no kubectl >= 1.21 is at hand (the subset used here)
  check_config.py runtime-libs BINARY     every library BINARY links is pulled in by
                                          the cpu stage's apt packages (apt-cache depends)

Kubernetes objects are checked field by field against the models of Debian's
python3-kubernetes (unknown fields, wrong types, missing required fields), and
together: selectors against labels, probe and scrape paths against
api/openapi.yaml, ports against FINC_PORT, the termination grace period
against the preStop sleep plus FINC_DRAIN_TIMEOUT, every FINC_* variable
against `finc serve --help`. Prints one line per check; exit 1 on any failure.
"""
import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys

import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
RUNTIME_UID = 10001
failures = 0


def result(ok, what):
    global failures
    print(f"  {'ok  ' if ok else 'FAIL'}  {what}")
    failures += not ok
    return ok


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def read(rel):
    with open(os.path.join(ROOT, rel)) as f:
        return f.read()


# ------------------------------------------------------- the server's own facts
def finc_options():
    """{FINC_VAR: default} from `finc serve --help`, the interface itself."""
    exe = os.environ.get("FINC", os.path.join(ROOT, "finc"))
    out = subprocess.run([exe, "serve", "--help"], capture_output=True, text=True).stdout
    opts = {}
    for m in re.finditer(r"^\s+(?:--[\w-]+\s+)?(FINC_\w+)\s+.*?(?:\(default (.*)\))?$", out, re.M):
        opts[m.group(1)] = m.group(2)
    if len(opts) < 10:
        sys.exit(f"could not read the FINC_* variables from `{exe} serve --help`")
    return opts


def api_paths():
    return set(yaml.safe_load(read("api/openapi.yaml"))["paths"])


def duration_s(v):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", str(v).strip())
    if not m:
        raise ValueError(f"not a duration: {v}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def size_bytes(v):
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", str(v).strip())
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]


# ------------------------------------------------------------------ kubernetes
def k8s_model(api_version, kind):
    import kubernetes.client as kc
    group_version = api_version.split("/")
    version = group_version[-1]
    names = [f"{version.capitalize()}{kind}"]
    if api_version == "autoscaling/v2":
        # python3-kubernetes in bookworm (22.6, Kubernetes 1.22) predates
        # autoscaling/v2 (1.23); v2beta2 has the same fields used here.
        names.append(f"V2beta2{kind}")
    for n in names:
        if hasattr(kc, n):
            return n
    return None


def is_quantity(path):
    """Resource quantities are int-or-string in the API; the models say str."""
    return re.search(r"\.resources\.(limits|requests)\.[^\[]+$|\.divisor$|\.(limits|requests)\.[^.\[]+$", path) is not None


def walk(value, typ, path, errors):
    import kubernetes.client as kc
    if typ.startswith("list["):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list")
            return
        for i, v in enumerate(value):
            walk(v, typ[5:-1], f"{path}[{i}]", errors)
    elif typ.startswith("dict("):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a map")
            return
        inner = typ[5:-1].split(", ", 1)[1]
        for k, v in value.items():
            walk(v, inner, f"{path}.{k}", errors)
    elif typ in ("str", "int", "bool", "float", "object", "datetime", "date"):
        quantity = is_quantity(path)
        ok = {"str": isinstance(value, str) or (quantity and isinstance(value, (int, float))
                                                and not isinstance(value, bool)),
              "int": isinstance(value, int) and not isinstance(value, bool),
              "bool": isinstance(value, bool),
              "float": isinstance(value, (int, float)) and not isinstance(value, bool)}.get(typ, True)
        if not ok:
            errors.append(f"{path}: {value!r} is not of type {typ}")
    else:
        cls = getattr(kc, typ)
        if not isinstance(value, dict):
            errors.append(f"{path}: expected an object ({typ})")
            return
        attr_of = {json_name: attr for attr, json_name in cls.attribute_map.items()}
        for k, v in value.items():
            if k not in attr_of:
                errors.append(f"{path}.{k}: unknown field of {typ}")
            else:
                walk(v, cls.openapi_types[attr_of[k]], f"{path}.{k}", errors)


def schema_errors(doc):
    import kubernetes.client as kc
    name = k8s_model(doc.get("apiVersion", ""), doc.get("kind", ""))
    if name is None:
        return [f"no model for {doc.get('apiVersion')} {doc.get('kind')}"]
    errors = []
    walk(doc, name, doc["kind"], errors)
    try:  # the models' constructors refuse missing required fields
        kc.ApiClient()._ApiClient__deserialize(doc, name)
    except (ValueError, TypeError) as e:
        errors.append(f"{doc['kind']}: {e}")
    return errors


def subset(small, big):
    return bool(small) and all(big.get(k) == v for k, v in small.items())


def check_k8s_set(label, docs, opts, paths, gpu):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    for d in docs:
        errs = schema_errors(d)
        result(not errs, f"{label}: {d['kind']}/{d['metadata']['name']} matches the Kubernetes schema"
               + ("" if not errs else ": " + "; ".join(errs)))
    kinds = sorted(by_kind)
    if not result(kinds == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]
                  and all(len(v) == 1 for v in by_kind.values()),
                  f"{label}: one Deployment, Service, HorizontalPodAutoscaler, PodDisruptionBudget ({kinds})"):
        return
    dep, svc = by_kind["Deployment"][0], by_kind["Service"][0]
    hpa, pdb = by_kind["HorizontalPodAutoscaler"][0], by_kind["PodDisruptionBudget"][0]
    pod = dep["spec"]["template"]
    labels = pod["metadata"].get("labels", {})
    result(subset(dep["spec"]["selector"]["matchLabels"], labels), f"{label}: Deployment selector matches its pod labels")
    result(subset(svc["spec"]["selector"], labels), f"{label}: Service selector matches the pods")
    result(subset(pdb["spec"]["selector"]["matchLabels"], labels), f"{label}: PodDisruptionBudget selector matches the pods")
    ref = hpa["spec"]["scaleTargetRef"]
    result((ref["apiVersion"], ref["kind"], ref["name"]) == (dep["apiVersion"], "Deployment", dep["metadata"]["name"])
           and 1 <= hpa["spec"].get("minReplicas", 1) <= hpa["spec"]["maxReplicas"],
           f"{label}: HPA scales the Deployment, {hpa['spec'].get('minReplicas', 1)}..{hpa['spec']['maxReplicas']} replicas")
    pdb_ok = ("maxUnavailable" in pdb["spec"] and hpa["spec"].get("minReplicas", 1) >= 2) or \
             ("minAvailable" in pdb["spec"] and int(pdb["spec"]["minAvailable"]) < hpa["spec"].get("minReplicas", 1))
    result(pdb_ok, f"{label}: PodDisruptionBudget leaves room for a drain at the HPA's minimum")

    spec = pod["spec"]
    cont = [c for c in spec["containers"] if c["name"] == "finc"]
    if not result(len(cont) == 1, f"{label}: a container named finc"):
        return
    c = cont[0]
    env = {e["name"]: e for e in c.get("env", [])}
    bad_env = [n for n in env if n.startswith("FINC_") and n not in opts]
    result(not bad_env, f"{label}: every FINC_* variable is one of `finc serve --help`" + (f" (not: {bad_env})" if bad_env else ""))
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    finc_port = int(env.get("FINC_PORT", {}).get("value", opts["FINC_PORT"]))
    result(ports.get("http") == finc_port, f"{label}: container port http = FINC_PORT ({finc_port})")

    def port_of(p):
        return ports.get(p) if isinstance(p, str) else p

    for probe, want in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        g = c.get(probe, {}).get("httpGet", {})
        result(g.get("path") == want and want in paths and port_of(g.get("port")) == finc_port,
               f"{label}: {probe} GET {g.get('path')} on port {port_of(g.get('port'))} (api/openapi.yaml has {want})")
    for sp in svc["spec"]["ports"]:
        result(port_of(sp["targetPort"]) == finc_port, f"{label}: Service port {sp['name']} -> container port {finc_port}")

    pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    sleep_s = float(pre[1]) if len(pre) == 2 and pre[0] == "sleep" else 0.0
    drain = float(env.get("FINC_DRAIN_TIMEOUT", {}).get("value", opts["FINC_DRAIN_TIMEOUT"]))
    grace = spec.get("terminationGracePeriodSeconds", 30)
    result(sleep_s > 0 and grace > sleep_s + drain,
           f"{label}: terminationGracePeriodSeconds {grace} > preStop sleep {sleep_s:g} + FINC_DRAIN_TIMEOUT {drain:g}")

    ann = pod["metadata"].get("annotations", {})
    if "prometheus.io/scrape" in ann:
        result(ann.get("prometheus.io/path") == "/metrics" and "/metrics" in paths
               and int(ann.get("prometheus.io/port", 0)) == finc_port,
               f"{label}: prometheus.io annotations scrape /metrics on {finc_port}")

    sc = {**spec.get("securityContext", {}), **c.get("securityContext", {})}
    result(sc.get("runAsNonRoot") is True and sc.get("runAsUser") == RUNTIME_UID
           and sc.get("allowPrivilegeEscalation") is False,
           f"{label}: non-root (uid {RUNTIME_UID}, the image's user), no privilege escalation")

    res = c.get("resources", {})
    lim, req = res.get("limits", {}), res.get("requests", {})
    result(all(k in lim and k in req for k in ("cpu", "memory")), f"{label}: cpu and memory requests and limits")
    thr = env.get("FINC_THREADS", {})
    ref = thr.get("valueFrom", {}).get("resourceFieldRef", {})
    result(ref.get("resource") == "limits.cpu" or "value" in thr,
           f"{label}: FINC_THREADS set (engine threads follow the CPU limit, not the node's cores)")

    image = c["image"]
    tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
    stages = dockerfile_stages(read("Dockerfile"))
    result(tag in stages, f"{label}: image {image} is a Dockerfile target ({', '.join(s for s in stages if not s.startswith('build'))})")
    backend = env.get("FINC_BACKEND", {}).get("value")
    if gpu:
        result(str(lim.get("nvidia.com/gpu")) == "1" and str(req.get("nvidia.com/gpu", lim.get("nvidia.com/gpu"))) == "1",
               f"{label}: nvidia.com/gpu: 1 in limits (and requests)")
        result(tag == "cuda" and backend in ("auto", "cuda"), f"{label}: the CUDA image, FINC_BACKEND {backend}")
    else:
        result("nvidia.com/gpu" not in lim and tag == "cpu", f"{label}: the CPU image, no GPU requested")
    return svc


SERVICEMONITOR_FIELDS = {
    "spec": {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels",
             "sampleLimit", "targetLimit", "attachMetadata"},
    "endpoint": {"port", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout", "honorLabels",
                 "honorTimestamps", "relabelings", "metricRelabelings", "tlsConfig", "bearerTokenSecret",
                 "authorization", "basicAuth", "oauth2", "followRedirects", "enableHttp2", "proxyUrl"},
}


def check_servicemonitor(path, svc, paths):
    docs = load_all(path)
    ok = len(docs) == 1 and docs[0].get("apiVersion") == "monitoring.coreos.com/v1" and docs[0].get("kind") == "ServiceMonitor"
    if not result(ok, f"{os.path.relpath(path, ROOT)}: one monitoring.coreos.com/v1 ServiceMonitor"):
        return
    sm = docs[0]
    unknown = sorted(set(sm["spec"]) - SERVICEMONITOR_FIELDS["spec"])
    for e in sm["spec"].get("endpoints", []):
        unknown += sorted(set(e) - SERVICEMONITOR_FIELDS["endpoint"])
    result(not unknown, "ServiceMonitor: known fields only (the operator's CRD, v1)" + (f": {unknown}" if unknown else ""))
    result(subset(sm["spec"]["selector"]["matchLabels"], svc["metadata"].get("labels", {})),
           "ServiceMonitor: selector matches the Service's labels")
    names = {p.get("name") for p in svc["spec"]["ports"]}
    eps = sm["spec"].get("endpoints", [])
    result(bool(eps) and all(e.get("port") in names and e.get("path", "/metrics") == "/metrics" for e in eps)
           and "/metrics" in paths, "ServiceMonitor: scrapes /metrics on a named Service port")


def guarded(label, fn, *args, **kw):
    """A malformed document fails its checks instead of stopping the run."""
    try:
        return fn(*args, **kw)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        result(False, f"{label}: malformed: {type(e).__name__}: {e}")
        return None


def cmd_k8s(cpu_path, gpu_path):
    opts, paths = finc_options(), api_paths()
    svc = guarded("k8s (cpu)", check_k8s_set, "k8s (cpu)", load_all(cpu_path), opts, paths, gpu=False)
    guarded("k8s (gpu)", check_k8s_set, "k8s (gpu)", load_all(gpu_path), opts, paths, gpu=True)
    if svc:
        guarded("ServiceMonitor", check_servicemonitor, os.path.join(ROOT, "deploy/k8s/servicemonitor.yaml"), svc, paths)


# ---------------------------------------------------- compose, nginx, prometheus
def nginx_directives(text):
    """(directive, args) for every simple directive, comments dropped; enough
    for the flat config here (no quoted semicolons outside return bodies)."""
    text = re.sub(r"#[^\n]*", "", text)
    text = re.sub(r"'[^']*'", "''", text)
    out = []
    for stmt in re.split(r"[;{}]", text):
        words = stmt.split()
        if words:
            out.append((words[0], words[1:]))
    return out


def cmd_compose():
    opts, paths = finc_options(), api_paths()
    compose = yaml.safe_load(read("deploy/compose.yaml"))
    services = compose["services"]
    fincs = sorted(n for n in services if re.fullmatch(r"finc-\d+", n))
    result(len(fincs) >= 2, f"compose: {len(fincs)} finc replicas ({', '.join(fincs)})")
    stages = dockerfile_stages(read("Dockerfile"))
    for n in fincs:
        s = services[n]
        env = {k: str(v) for k, v in (s.get("environment") or {}).items()}
        bad = [k for k in env if k.startswith("FINC_") and k not in opts]
        drain = float(env.get("FINC_DRAIN_TIMEOUT", opts["FINC_DRAIN_TIMEOUT"]))
        grace = duration_s(s.get("stop_grace_period", "10s"))
        cpus = float(s.get("deploy", {}).get("resources", {}).get("limits", {}).get("cpus", 0))
        threads = int(env.get("FINC_THREADS", "0"))
        result(not bad and s["build"]["target"] in stages and grace > drain and 0 < threads <= cpus,
               f"compose {n}: target {s['build']['target']}, FINC_* names valid{' (not: %s)' % bad if bad else ''}, "
               f"stop_grace_period {grace:g} s > drain {drain:g} s, {threads} threads <= {cpus:g} cpus")

    conf = read("deploy/nginx/nginx.conf")
    d = nginx_directives(conf)
    servers = [a for k, a in d if k == "server" and a and re.fullmatch(r"[\w.-]+:\d+", a[0])]
    finc_port = int(opts["FINC_PORT"])
    result(sorted(a[0] for a in servers) == [f"{n}:{finc_port}" for n in fincs],
           f"nginx: upstream servers = the compose replicas on FINC_PORT {finc_port}")
    result(all(any(p.startswith("max_fails=") for p in a) and any(p.startswith("fail_timeout=") for p in a) for a in servers),
           "nginx: passive health (max_fails, fail_timeout) on every upstream server")
    one = {k: a for k, a in d}
    nu = set(one.get("proxy_next_upstream", []))
    result({"error", "timeout", "http_502", "http_503", "http_504", "non_idempotent"} <= nu,
           f"nginx: proxy_next_upstream {' '.join(sorted(nu))} (POST retried: sampling and scoring are safe to repeat)")
    tries = int(one.get("proxy_next_upstream_tries", ["0"])[0])
    result(tries >= len(fincs), f"nginx: proxy_next_upstream_tries {tries} reaches every replica")
    body = size_bytes(one["client_max_body_size"][0])
    result(body == size_bytes(opts["FINC_MAX_BODY"]), f"nginx: client_max_body_size {body} = the server's --max-body")
    idle = float(opts["FINC_IDLE_TIMEOUT"])
    ka = [duration_s(a[0]) for k, a in d if k == "keepalive_timeout"]
    result(len(ka) == 2 and ka[1] < idle, f"nginx: upstream keepalive_timeout {ka[-1]:g} s < the server's --idle-timeout {idle:g} s")
    read_t = duration_s(one["proxy_read_timeout"][0])
    result(read_t > float(opts["FINC_TIMEOUT_MS"]) / 1000, f"nginx: proxy_read_timeout {read_t:g} s > the server's queue deadline")
    listen = int(one["listen"][0])
    published = [p for p in services["nginx"].get("ports", []) if str(p).endswith(f":{listen}")]
    mounts = services["nginx"].get("volumes", [])
    result(bool(published) and "./nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in mounts,
           f"compose nginx: publishes {listen}, mounts deploy/nginx/nginx.conf")

    prom = yaml.safe_load(read("deploy/prometheus/prometheus.yml"))
    targets = sorted(t for j in prom["scrape_configs"] if j["job_name"] == "finc"
                     for sc in j["static_configs"] for t in sc["targets"])
    mp = [j.get("metrics_path", "/metrics") for j in prom["scrape_configs"] if j["job_name"] == "finc"]
    result(targets == [f"{n}:{finc_port}" for n in fincs] and mp == ["/metrics"] and "/metrics" in paths,
           "prometheus: scrapes /metrics of every compose replica")
    pm = services["prometheus"].get("volumes", [])
    result("./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in pm,
           "compose prometheus: mounts deploy/prometheus/prometheus.yml")


# ------------------------------------------------------------------ Dockerfile
def dockerfile_instructions(text):
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            word, _, rest = s.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_stages(text):
    """{stage name: [(instruction, args)]} in order."""
    stages, cur = {}, None
    for ins, rest in dockerfile_instructions(text):
        if ins == "FROM":
            m = re.search(r"\bAS\s+(\S+)", rest, re.I)
            cur = m.group(1) if m else f"stage{len(stages)}"
            stages[cur] = [(ins, rest)]
        elif cur:
            stages[cur].append((ins, rest))
    return stages


def dockerignore_included(rel, patterns):
    """.dockerignore semantics for the patterns used here: the last matching
    pattern wins, `!` re-includes, a pattern that matches a directory matches
    everything below it."""
    included = True
    for neg, pat in patterns:
        if fnmatch.fnmatch(rel, pat) or rel.startswith(pat + "/"):
            included = neg
    return included


def dockerignore_patterns():
    pats = []
    for line in read(".dockerignore").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            neg = line.startswith("!")
            pats.append((neg, os.path.normpath(line.lstrip("!"))))
    return pats


def context_files():
    pats = dockerignore_patterns()
    out = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for f in filenames:
            rel = os.path.relpath(os.path.join(dirpath, f), ROOT)
            if dockerignore_included(rel, pats):
                out.append(rel)
    return sorted(out)


def apt_packages(run_args):
    """The package names of every `apt-get install` in one RUN."""
    words = shlex.split(run_args.replace("&&", " && "))
    pk, on = [], False
    for prev, w in zip([""] + words, words):
        if w == "install" and prev == "apt-get":
            on = True
        elif w in ("&&", "||", ";", "|"):
            on = False
        elif on and not w.startswith("-"):
            pk.append(w)
    return pk


def cmd_dockerfile():
    text = read("Dockerfile")
    opts = finc_options()
    stages = dockerfile_stages(text)
    names = list(stages)
    result({"build-cpu", "cpu", "build-cuda", "cuda"} <= set(names) and names[-1] == "cpu",
           f"Dockerfile: stages {', '.join(names)}; cpu last (the default target)")
    froms = [rest.split()[0] for st in stages.values() for ins, rest in st if ins == "FROM"]
    result(all(":" in f and not f.endswith(":latest") for f in froms), f"Dockerfile: base images tagged ({', '.join(froms)})")
    pats, files = dockerignore_patterns(), set(context_files())
    for target in ("cpu", "cuda"):
        st = stages[target]
        env = {}
        for ins, rest in st:
            if ins == "ENV":
                env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
        copies = {}
        for ins, rest in st:
            if ins == "COPY" and "--from" not in rest:
                src, dst = rest.split()[-2:]
                copies[dst] = src
        user = [rest for ins, rest in st if ins == "USER"]
        hc = [rest for ins, rest in st if ins == "HEALTHCHECK"]
        expose = [rest for ins, rest in st if ins == "EXPOSE"]
        bad_env = [k for k in env if k.startswith("FINC_") and k not in opts]
        result(user and user[-1].split(":")[0] == str(RUNTIME_UID), f"Dockerfile {target}: USER {user[-1] if user else None} (non-root)")
        hc_cmd = re.search(r'CMD \["([^"]+)"', hc[-1]) if hc else None
        result(bool(hc_cmd) and hc_cmd.group(1) in copies, f"Dockerfile {target}: HEALTHCHECK runs a file the stage copies in")
        result(expose == [env.get("FINC_PORT")], f"Dockerfile {target}: EXPOSE {expose} = FINC_PORT {env.get('FINC_PORT')}")
        result(env.get("FINC_WEIGHTS") in copies and copies[env["FINC_WEIGHTS"]] in files,
               f"Dockerfile {target}: FINC_WEIGHTS {env.get('FINC_WEIGHTS')} is the shipped weights file")
        result(not bad_env and env.get("FINC_HOST") == "0.0.0.0",
               f"Dockerfile {target}: FINC_* names valid, listens on all addresses" + (f" (not: {bad_env})" if bad_env else ""))
        missing = [s for s in copies.values() if s not in files]
        result(not missing, f"Dockerfile {target}: every COPY source is in the build context" + (f" (not: {missing})" if missing else ""))
    needed = ["Makefile", "weights/fashion-mnist.safetensors", "deploy/docker/healthcheck.sh"]
    for d in ("engine", "io", "cli", "server", "kernels"):
        needed += [f for f in files if f.startswith(d + "/")][:1] or [d + "/?"]
    excluded = [f for f in ("build/libfinc.a", "finc", ".git/HEAD", "tools/train.py") if dockerignore_included(f, pats)]
    result(all(f in files for f in needed) and not excluded,
           f".dockerignore: sources, Makefile, weights and health probe in; build outputs, .git, tools out ({len(files)} files)")
    if shutil.which("apt-cache"):
        for target in ("build-cpu", "cpu"):
            pk = [p for ins, rest in stages[target] if ins == "RUN" for p in apt_packages(rest)]
            missing = []
            for p in pk:
                out = subprocess.run(["apt-cache", "policy", p], capture_output=True, text=True).stdout
                if not re.search(r"Candidate: (?!\(none\))", out):
                    missing.append(p)
            result(pk and not missing, f"Dockerfile {target}: {len(pk)} apt packages exist in this Debian ({' '.join(pk)})"
                   + (f"; missing: {missing}" if missing else ""))


def cmd_runtime_libs(binary):
    """The libraries BINARY needs at run time, each owned by a package that the
    cpu stage's apt-get install pulls in (itself or as a dependency)."""
    stages = dockerfile_stages(read("Dockerfile"))
    pk = [p for ins, rest in stages["cpu"] if ins == "RUN" for p in apt_packages(rest)]
    out = subprocess.run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
                          "--no-breaks", "--no-replaces", "--no-enhances", *pk], capture_output=True, text=True).stdout
    closure = {l.strip() for l in out.splitlines() if not l.startswith(" ")} | {"libc6"}
    closure |= {l.split(":", 1)[1].strip().strip("<>") for l in out.splitlines() if "Depends:" in l}
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    libs = re.findall(r"=> (/\S+)", ldd)
    owners, unowned = {}, []
    for lib in libs:
        real = os.path.realpath(lib)
        o = subprocess.run(["dpkg", "-S", real], capture_output=True, text=True)
        if o.returncode:
            o = subprocess.run(["dpkg", "-S", lib], capture_output=True, text=True)
        if o.returncode:
            unowned.append(lib)
            continue
        owners[os.path.basename(lib)] = o.stdout.split(":", 1)[0]
    outside = sorted({p for p in owners.values() if p not in closure})
    result(not unowned and not outside and "not found" not in ldd,
           f"runtime libraries: the {len(libs)} libraries {os.path.relpath(binary, ROOT) if binary.startswith(ROOT) else binary} "
           f"links come from the cpu stage's packages ({' '.join(pk)}) and their dependencies"
           + (f"; not covered: {outside} {unowned}" if outside or unowned else ""))


def merge(base, patch):
    """A strategic merge patch as kustomize applies the ones in deploy/k8s/gpu:
    maps merged key by key, lists of named maps merged by name, else replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v) if k in base else v
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(x, dict) and "name" in x for x in base + patch):
        out = [dict(x) for x in base]
        for p in patch:
            i = next((i for i, x in enumerate(out) if x["name"] == p["name"]), None)
            if i is None:
                out.append(p)
            else:
                out[i] = merge(out[i], p)
        return out
    return patch


def render(d):
    """resources (files and directories), images (newName, newTag) and
    patches (path), the fields deploy/k8s uses; anything else is refused."""
    with open(os.path.join(d, "kustomization.yaml")) as f:
        k = yaml.safe_load(f)
    unknown = set(k) - {"apiVersion", "kind", "resources", "images", "patches"}
    if unknown:
        sys.exit(f"render: {d}: unsupported kustomization fields {sorted(unknown)}")
    docs = []
    for r in k.get("resources", []):
        p = os.path.normpath(os.path.join(d, r))
        docs += render(p) if os.path.isdir(p) else load_all(p)
    for pt in k.get("patches", []):
        for patch in load_all(os.path.join(d, pt["path"])):
            for i, doc in enumerate(docs):
                if (doc["kind"], doc["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"]):
                    docs[i] = merge(doc, patch)
    for im in k.get("images", []):
        for doc in docs:
            for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                name, _, tag = c["image"].partition(":")
                if name == im["name"]:
                    c["image"] = f"{im.get('newName', name)}:{im.get('newTag', tag)}"
    return docs


def main(argv):
    if argv[:1] == ["k8s"] and len(argv) == 3:
        cmd_k8s(argv[1], argv[2])
    elif argv == ["compose"]:
        guarded("compose", cmd_compose)
    elif argv == ["dockerfile"]:
        guarded("Dockerfile", cmd_dockerfile)
    elif argv[:1] == ["context"] and len(argv) == 2:
        for rel in context_files():
            dst = os.path.join(argv[1], rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, rel), dst)
        return 0
    elif argv[:1] == ["render"] and len(argv) == 3:
        with open(argv[2], "w") as f:
            yaml.safe_dump_all(render(argv[1]), f, sort_keys=False)
        return 0
    elif argv[:1] == ["apt-packages"] and len(argv) == 2:
        stages = dockerfile_stages(read("Dockerfile"))
        print(" ".join(p for ins, rest in stages[argv[1]] if ins == "RUN" for p in apt_packages(rest)))
        return 0
    elif argv[:1] == ["runtime-libs"] and len(argv) == 2:
        cmd_runtime_libs(os.path.abspath(argv[1]))
    else:
        sys.exit(__doc__)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
