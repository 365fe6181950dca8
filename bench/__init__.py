"""Benchmarks: each measures its contenders side by side in one run and prints every round.

Run them as modules from the repository root (the package is not installed with digitgrad):
``python -m bench.<name> --help``.

Benchmarks, one module each:

    engine           a DeepNetwork training step: digitgrad vs the same step in numpy
    cnn              a ConvNetwork training step and batch-1 inference vs PyTorch
    train_vs_torch   a training epoch of the trainer vs PyTorch
    uploads          accuracy on realistic and hard uploads, and the MNIST round trip
    written_numbers  POST /predict/number on generated numbers of 2-6 digits
    serve            gunicorn throughput and latency: /healthz vs /predict
    peers            serving against the peers: our gunicorn (and a baseline checkout) vs
                     KServe's model server and MLServer, V2 JSON and binary, batch 1-1,024,
                     64 and 256 connections
    request_cpu      where a request's CPU goes: py-spy samples by component

Shared by them (no ``main`` of their own):

    servers          gunicorn with the repo's config on a free loopback port: start, wait for
                     /readyz, stop (tests/serving.py builds on it too)
    loadgen          the request bodies, HTTP load (wrk or Python clients), CPU per request,
                     the table of medians and the per-round ratios
    kserve_model     KServe's model server around our model, started by ``peers`` under
                     --kserve-python
    mlserver_model   MLServer's model class around our model, loaded by ``peers`` under
                     --mlserver-python
    floor_gunicorn.conf.py  the gunicorn config of ``serve --floor``

A new benchmark is a module here with ``main(argv: list[str] | None = None) -> int`` and
``if __name__ == "__main__": sys.exit(main())``; a serving benchmark builds on ``servers`` and
``loadgen``. Nothing is imported here: ``peers`` runs ``kserve_model`` and ``mlserver_model``
under other interpreters.
"""
