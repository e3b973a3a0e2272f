"""Deployment: Core ML / ONNX export, op census and the latency benchmark.

Modules (import them directly; nothing heavy is imported here):

* :mod:`.backbones` resolves iFormer archs, configs and OpenMMLab peers;
* :mod:`.export` prepares (BN folding) and exports with torch.export / ONNX;
* :mod:`.coreml` converts to an ML program, validates and (macOS) times it;
* :mod:`.census` counts the ops of a Core ML ML program;
* :mod:`.latency` times callables and the CPU proxies;
* :mod:`.report` writes the markdown, JSON and chart;
* :mod:`.benchmark` runs it all (``tools/benchmark_latency.py``).
"""
