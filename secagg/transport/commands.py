"""The deployment subcommands: ``secagg keys``, ``secagg serve`` (also as a combiner) and ``secagg client``.

``secagg cli`` owns the parser and the training flags (``serve`` takes every ``train`` flag); this
module adds the network options and runs the commands.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from secagg.crypto.keys import SigningKey
from secagg.errors import ConfigError
from secagg.experiment import ExperimentConfig, config_summary
from secagg.placement import place
from secagg.task import TaskFactory, load_task_factory, local_data_factory, task_dataset
from secagg.transport.auth import load_identity, load_registry, save_identity, save_registry
from secagg.transport.combiner import NetworkCombiner
from secagg.transport.node import ClientFault, NetworkClient
from secagg.transport.serve import NetworkServer, ServeOptions
from secagg.transport.tls import DEFAULT_HOSTS, TLSFiles, make_tls_files

#: a server's first-stage deadline by default (training + key advertisement), and what a top server
#: adds above its combiners' whole sessions
TASK_SECONDS = 120.0
TOP_SLACK_SECONDS = 60.0
#: the stages a combiner's session may each spend a grace period in (a client lost in each), which a
#: top server's first stage waits for above its own quorum
TOP_GRACE_STAGES = 4
#: a two-level top server's --liveness: combiners poll every few seconds (HEARTBEAT_SECONDS), also while
#: their own session runs, so one silent this long is gone
TOP_LIVENESS_SECONDS = 30.0


def add_keys_parser(sub: Any) -> argparse.ArgumentParser:
    keys = sub.add_parser(
        "keys", help="make a deployment's client identities, registry and TLS certificates",
        description="Writes OUT/registry.json (every client's Ed25519 public key), OUT/clients/client-ID.pem "
                    "(each client's private identity: give each to its client only) and OUT/tls/ "
                    "(ca.pem for the clients; server.pem and server.key for the server).")
    keys.add_argument("--clients", type=int, required=True, help="number of client identities")
    keys.add_argument("--out", type=Path, default=Path("deploy"), help="output directory (default: deploy)")
    keys.add_argument("--host", action="append", default=None,
                      help=f"a server host name or IP for its certificate (repeatable; default: "
                           f"{', '.join(DEFAULT_HOSTS)})")
    keys.add_argument("--days", type=int, default=365, help="certificate validity in days (default: 365)")
    keys.add_argument("--combiners", type=int, default=0, metavar="M",
                      help="also M combiner identities for a two-level deployment: OUT/combiners/"
                           "combiner-J.pem and OUT/combiners/registry.json, the top server's --registry "
                           "(default: none)")
    return keys


def add_serve_options(serve: argparse.ArgumentParser) -> None:
    net = serve.add_argument_group("network")
    net.add_argument("--address", default="127.0.0.1:50051", help="host:port to listen on (default: "
                                                                   "127.0.0.1:50051; port 0 picks one)")
    net.add_argument("--registry", type=Path, required=True, help="registry.json of the clients' keys")
    net.add_argument("--tls-cert", dest="tls_cert", type=Path, default=None, help="server certificate PEM")
    net.add_argument("--tls-key", dest="tls_key", type=Path, default=None, help="server private key PEM")
    net.add_argument("--insecure", action="store_true",
                     help="listen without TLS (loopback and trusted networks only)")
    net.add_argument("--task-timeout", dest="task_timeout", type=float, default=None, metavar="S",
                     help=f"seconds clients get to train and advertise keys (default: {TASK_SECONDS:g}; a "
                          f"two-level top server, whose first stage spans the combiners' whole sessions: "
                          f"{TASK_SECONDS:g} + 4 stage timeouts + {TOP_SLACK_SECONDS:g})")
    net.add_argument("--stage-timeout", dest="stage_timeout", type=float, default=30.0, metavar="S",
                     help="seconds for each later protocol stage (default: 30)")
    net.add_argument("--grace", type=float, default=10.0, metavar="S",
                     help="once a quorum answered a stage, wait at most S more seconds for stragglers "
                          "(default: 10)")
    net.add_argument("--task-grace", dest="task_grace", type=float, default=None, metavar="S",
                     help=f"the first stage's --grace (default: --grace; a two-level top server, whose first "
                          f"stage waits for the combiners' whole sessions: {TOP_GRACE_STAGES} x --grace + "
                          f"{TOP_SLACK_SECONDS:g})")
    net.add_argument("--liveness", type=float, default=None, metavar="S",
                     help=f"once a quorum answered a stage, stop waiting for parties that made no call for S "
                          f"seconds (default: off; a two-level top server, whose combiners poll it while "
                          f"they work: {TOP_LIVENESS_SECONDS:g})")
    net.add_argument("--wait-clients", dest="wait_clients", type=int, default=None, metavar="N",
                     help="before round 1, wait until N clients logged in (default: clients per round)")
    net.add_argument("--wait-timeout", dest="wait_timeout", type=float, default=300.0, metavar="S",
                     help="give up waiting for --wait-clients after S seconds and start (default: 300)")
    net.add_argument("--audit-dir", dest="audit_dir", type=Path, default=None,
                     help="write each secure round's unmasked sum and survivors here")
    net.add_argument("--port-file", dest="port_file", type=Path, default=None,
                     help="write the listening port to this file once serving (useful with port 0)")
    comb = serve.add_argument_group(
        "combiner (two-level secure sum)",
        "With --combiner J this process is combiner J of a run whose top server was started with "
        "--combiners M: it logs in to the top (--top, --identity) and takes the run's configuration from "
        "it (no training flags here), and serves its own clients (client c belongs to combiner c mod M; "
        "--registry: the clients' keys). --address, TLS, timeouts and --audit-dir are its own server's.")
    comb.add_argument("--combiner", type=int, default=None, metavar="J", help="run as combiner J")
    comb.add_argument("--top", default=None, metavar="HOST:PORT", help="the top server's address")
    comb.add_argument("--identity", type=Path, default=None,
                      help="this combiner's private identity PEM ('secagg keys --combiners')")
    comb.add_argument("--top-ca-cert", dest="top_ca_cert", type=Path, default=None,
                      help="CA certificate PEM that signed the top server's certificate")
    comb.add_argument("--top-server-name", dest="top_server_name", default=None,
                      help="host name to check in the top server's certificate (default: from --top)")
    comb.add_argument("--combiner-registry", dest="combiner_registry", type=Path, default=None,
                      help="the combiners' registry.json: needed for a malicious-mode top session")
    comb.add_argument("--give-up", dest="give_up", type=float, default=300.0, metavar="S",
                      help="exit after the top server is unreachable this long (default: 300)")
    comb.add_argument("--fault", default=None, metavar="KIND@ROUND:STAGE",
                      help="inject a failure towards the top (kill, hang, reconnect) for drills and tests")


def task_seconds(args: argparse.Namespace, top_of_combiners: bool = False) -> float:
    """``--task-timeout``, or its default: a top server's first stage waits for its combiners' whole
    sessions (their clients' training and four more stages each)."""
    if args.task_timeout is not None:
        return float(args.task_timeout)
    if top_of_combiners:
        return TASK_SECONDS + 4 * float(args.stage_timeout) + TOP_SLACK_SECONDS
    return TASK_SECONDS


def task_grace(args: argparse.Namespace, top_of_combiners: bool = False) -> float | None:
    """``--task-grace``, or its default: ``None`` (the stage grace) unless this is a two-level top
    server, whose combiners' sessions differ in length by up to their own graces and training times."""
    if args.task_grace is not None:
        return float(args.task_grace)
    if top_of_combiners:
        return TOP_GRACE_STAGES * float(args.grace) + TOP_SLACK_SECONDS
    return None


def add_client_parser(sub: Any) -> argparse.ArgumentParser:
    client = sub.add_parser(
        "client", help="take part in a deployment as one client",
        description="Logs in to a secagg server with this client's Ed25519 identity, trains on its "
                    "data shard each round it is sampled in, and takes part in secure aggregation.")
    client.add_argument("--address", required=True, help="server host:port")
    client.add_argument("--id", dest="client_id", type=int, required=True, help="this client's id")
    client.add_argument("--identity", type=Path, required=True, help="this client's private identity PEM")
    client.add_argument("--shard", type=int, default=None, help="data partition to train on (default: --id)")
    client.add_argument("--task", default="digits", metavar="SPEC",
                        help="the model and data: 'digits' (default, bundled with scikit-learn), "
                             "'breast-cancer' (bundled; checks that the server's run trains on it) or "
                             "'module:function', your own task factory (see secagg.task); name the same one "
                             "as the server's --task")
    client.add_argument("--ca-cert", dest="ca_cert", type=Path, default=None,
                        help="CA certificate PEM that signed the server's certificate")
    client.add_argument("--server-name", dest="server_name", default=None,
                        help="host name to check in the server certificate (default: from --address)")
    client.add_argument("--insecure", action="store_true", help="connect without TLS")
    client.add_argument("--registry", type=Path, default=None,
                        help="registry.json: needed to take part in malicious-server-mode sessions")
    client.add_argument("--audit-dir", dest="audit_dir", type=Path, default=None,
                        help="write each round's quantized session input here")
    client.add_argument("--state-file", dest="state_file", type=Path, default=None,
                        help="keep this client's own state between rounds here (FedBN's BatchNorm layers, "
                             "SCAFFOLD's control variate; never sent), so a restart goes on from it "
                             "(default: in memory only)")
    client.add_argument("--give-up", dest="give_up", type=float, default=300.0, metavar="S",
                        help="exit after the server is unreachable this long (default: 300)")
    client.add_argument("--threads", type=int, default=1,
                        help="torch threads for local training (default: 1; many clients on one machine "
                             "must not oversubscribe its cores)")
    client.add_argument("--min-local-noise", dest="min_local_noise", type=float, default=None, metavar="Z",
                        help="this client's privacy floor: take part only if the server's configuration adds "
                             "local DP noise (--dp local) with noise multiplier >= Z, drawn on this client "
                             "(default: no floor)")
    client.add_argument("--fault", default=None, metavar="KIND@ROUND:STAGE",
                        help="inject a failure (kill, hang, reconnect) for drills and tests, e.g. "
                             "kill@2:MASKED_INPUT")
    return client


def run_keys(args: argparse.Namespace) -> int:
    if args.clients < 1:
        raise ConfigError(f"--clients: must be >= 1, got {args.clients}")
    registry = {}
    for u in range(args.clients):
        key = SigningKey.generate()
        save_identity(args.out / "clients" / f"client-{u}.pem", key)
        registry[u] = key.public
    save_registry(args.out / "registry.json", registry)
    if args.combiners < 0:
        raise ConfigError(f"--combiners: must be >= 0, got {args.combiners}")
    if args.combiners:
        combiners = {}
        for j in range(args.combiners):
            key = SigningKey.generate()
            save_identity(args.out / "combiners" / f"combiner-{j}.pem", key)
            combiners[j] = key.public
        save_registry(args.out / "combiners" / "registry.json", combiners)
        print(f"wrote {args.combiners} combiner identities and their registry in {args.out / 'combiners'}")
    tls = make_tls_files(args.out / "tls", tuple(args.host) if args.host else DEFAULT_HOSTS, days=args.days)
    print(f"wrote {args.out / 'registry.json'}, {args.clients} identities in {args.out / 'clients'}, "
          f"{tls.ca_cert}, {tls.server_cert}, {tls.server_key}")
    return 0


def _logging() -> None:
    # force: an imported library may already have configured the root logger
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        force=True)


def run_serve(args: argparse.Namespace, config: ExperimentConfig) -> int:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert, --tls-key: give both (or --insecure)")
    if args.tls_cert is None and not args.insecure:
        raise ConfigError("--tls-cert/--tls-key: a server needs TLS; pass --insecure to listen in the clear")
    tls = TLSFiles(Path(), args.tls_cert, args.tls_key) if args.tls_cert is not None else None
    top = place(config.fedavg.aggregator).combiners is not None
    if args.liveness is not None and not top:
        raise ConfigError("--liveness: only a two-level top server (--combiners) takes it: its combiners "
                          "poll it while they work, but clients go quiet while they train")
    options = ServeOptions(args.address, tls, task_seconds(args, top), args.stage_timeout, args.grace,
                           audit_dir=args.audit_dir, wait_clients=args.wait_clients,
                           task_grace_seconds=task_grace(args, top),
                           liveness_seconds=args.liveness if args.liveness is not None
                           else TOP_LIVENESS_SECONDS if top else None,
                           wait_seconds=args.wait_timeout)
    _logging()
    server = NetworkServer(config, load_registry(args.registry), options, args.out, resume=args.resume,
                           task_factory=load_task_factory(args.task))
    port = server.start()
    if args.port_file is not None:
        args.port_file.write_text(f"{port}\n")
    logging.getLogger("secagg.serve").info("serving %s on port %d (%s mode)", config_summary(config), port,
                                           server.mode)

    def on_round(row: dict[str, Any]) -> None:
        state = f"aborted: {row['aborted']}" if row.get("aborted") else f"{row['clients']} clients"
        print(f"round {row['round']}: accuracy {100 * row['accuracy']:.2f}%, {state}, "
              f"{row['seconds']:.2f} s", flush=True)

    result = server.run(on_round)
    print(f"finished {len(result.history)} rounds; wrote {args.out / 'results.json'}", flush=True)
    return 0


def _task_factory(args: argparse.Namespace) -> TaskFactory:
    """``--task`` (and ``--dataset``/``--data``): the model and data this process builds."""
    return local_data_factory(load_task_factory(args.task),
                              dataset=task_dataset(args.task, getattr(args, "dataset", None)),
                              data=getattr(args, "data", None))


def run_combiner(args: argparse.Namespace) -> int:
    """``secagg serve --combiner J``: see :mod:`secagg.transport.combiner`."""
    for flag, value in (("--top", args.top), ("--identity", args.identity)):
        if value is None:
            raise ConfigError(f"{flag}: a combiner needs it (--combiner {args.combiner})")
    if args.combiner < 0:
        raise ConfigError(f"--combiner: must be >= 0, got {args.combiner}")
    if args.resume:
        raise ConfigError("--resume: a combiner keeps no run of its own (the top server checkpoints)")
    if args.liveness is not None:
        raise ConfigError("--liveness: a combiner's clients go quiet while they train; only a top server "
                          "takes it")
    for flag, given in (("--wait-clients", args.wait_clients is not None),
                        ("--wait-timeout", args.wait_timeout != 300.0),
                        ("--out", args.out != Path("runs/serve"))):
        if given:
            raise ConfigError(f"{flag}: the top server's (it starts the rounds and writes the run); a "
                              f"combiner serves its clients whenever the top opens a round")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert, --tls-key: give both (or --insecure)")
    if args.tls_cert is None and not args.insecure:
        raise ConfigError("--tls-cert/--tls-key: a combiner serves its clients over TLS; pass --insecure to "
                          "listen in the clear")
    if args.top_ca_cert is None and not args.insecure:
        raise ConfigError("--top-ca-cert: a combiner checks the top server's certificate; pass --insecure to "
                          "connect in the clear")
    tls = TLSFiles(Path(), args.tls_cert, args.tls_key) if args.tls_cert is not None else None
    options = ServeOptions(args.address, tls, task_seconds(args), args.stage_timeout, args.grace,
                           audit_dir=args.audit_dir, task_grace_seconds=task_grace(args))
    _logging()

    def on_listen(port: int) -> None:
        if args.port_file is not None:
            args.port_file.write_text(f"{port}\n")

    combiner = NetworkCombiner(
        args.top, args.combiner, load_identity(args.identity), load_registry(args.registry), options,
        ca_cert=args.top_ca_cert.read_bytes() if args.top_ca_cert is not None else None,
        registry=load_registry(args.combiner_registry) if args.combiner_registry is not None else None,
        server_name=args.top_server_name, fault=ClientFault.parse(args.fault) if args.fault else None,
        give_up_seconds=args.give_up, on_listen=on_listen, task_factory=_task_factory(args))
    rounds = combiner.run()
    print(f"combiner {args.combiner}: done, took part in {rounds} rounds", flush=True)
    return 0


def run_client(args: argparse.Namespace) -> int:
    if args.ca_cert is None and not args.insecure:
        raise ConfigError("--ca-cert: a client needs the CA certificate; pass --insecure to connect in "
                          "the clear")
    if args.threads < 1:
        raise ConfigError(f"--threads: must be >= 1, got {args.threads}")
    import torch

    if args.min_local_noise is not None and not args.min_local_noise > 0:
        raise ConfigError(f"--min-local-noise: must be > 0, got {args.min_local_noise}")
    torch.set_num_threads(args.threads)
    _logging()
    client = NetworkClient(
        args.address, args.client_id, load_identity(args.identity),
        ca_cert=args.ca_cert.read_bytes() if args.ca_cert is not None else None,
        registry=load_registry(args.registry) if args.registry is not None else None,
        shard=args.shard, audit_dir=args.audit_dir, state_file=args.state_file,
        fault=ClientFault.parse(args.fault) if args.fault else None, give_up_seconds=args.give_up,
        server_name=args.server_name, min_local_noise=args.min_local_noise,
        task_factory=_task_factory(args))
    rounds = client.run()
    print(f"client {args.client_id}: done, took part in {rounds} rounds", flush=True)
    return 0
