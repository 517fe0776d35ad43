"""Provider emulators: real HTTP servers on loopback that speak providers' batch APIs, with fault injection.

``SimulatorCluster`` runs several emulated providers plus a control server; ``run_simulate`` backs
``batchgw simulate``. The deterministic model's token functions are public so tests can predict usage.
"""

from gateway.simulator.config import ProviderSpec, SimulatorConfig, default_config, load_config, load_specs
from gateway.simulator.errors import ApiError
from gateway.simulator.model import Reply, embedding_vector, hash_fraction, model_reply, prompt_tokens, text_tokens
from gateway.simulator.openai_protocol import OpenAIDriver, message_texts, simulate_chat
from gateway.simulator.server import SimulatorCluster, run_simulate, serve_forever
from gateway.simulator.state import EmulatorState, Faults

__all__ = [
    "ApiError",
    "EmulatorState",
    "Faults",
    "OpenAIDriver",
    "ProviderSpec",
    "Reply",
    "SimulatorCluster",
    "SimulatorConfig",
    "default_config",
    "embedding_vector",
    "hash_fraction",
    "load_config",
    "load_specs",
    "message_texts",
    "model_reply",
    "prompt_tokens",
    "run_simulate",
    "serve_forever",
    "simulate_chat",
    "text_tokens",
]
