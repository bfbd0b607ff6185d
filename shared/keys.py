"""Every Redis key, stream and channel name the system uses, in one place.

All names start with a configurable prefix (``TEAMDASH_REDIS_PREFIX``, default ``td``) so
several stacks can share one Redis. Topics are the units clients subscribe to:

======================  ==============================================================
topic                   events
======================  ==============================================================
``metrics``             ``metrics:update``
``logs``                ``system:alert``
``agents``              lifecycle of every agent (created / status / error, no output)
``agent:{agentId}``     one agent's output, status and errors
======================  ==============================================================

Each topic has a stream (the replay buffer), a meta hash (offset counter and epoch) and a
pub/sub channel (live delivery); see :mod:`shared.bus`.
"""

from __future__ import annotations

from dataclasses import dataclass

# The topic names belong to the subscription vocabulary; re-exported for the services.
from shared.topics import AGENTS_TOPIC, LOGS_TOPIC, METRICS_TOPIC, agent_topic

__all__ = ["AGENTS_TOPIC", "LOGS_TOPIC", "METRICS_TOPIC", "RUNNERS_GROUP", "Keys", "agent_topic"]

#: Consumer group of runners on the shared ``agent:create`` stream.
RUNNERS_GROUP = "runners"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "td"

    # -- topics (see shared.bus) ------------------------------------------------
    def topic_stream(self, topic: str) -> str:
        return f"{self.prefix}:topic:{topic}"

    def topic_meta(self, topic: str) -> str:
        return f"{self.prefix}:meta:{topic}"

    def transcript(self, topic: str) -> str:
        """Stream: an agent topic's durable transcript, the same entries as its stream
        (``{offset}-0``, fields ``d`` and ``t``) kept up to the transcript limits
        (``publish.lua``); read by ``agent:history``."""
        return f"{self.prefix}:transcript:{topic}"

    def publish_calls(self, publisher: str) -> str:
        """Hash: topic stream → one publisher's recent publish calls (``publish.lua``
        answers a retried call from it instead of publishing twice); expires after 10 min."""
        return f"{self.prefix}:pubcalls:{publisher}"

    def topic_channel(self, topic: str) -> str:
        return f"{self.prefix}:ch:{topic}"

    @property
    def topic_channel_prefix(self) -> str:
        return f"{self.prefix}:ch:"

    # -- agent runners ----------------------------------------------------------
    @property
    def create_stream(self) -> str:
        """``agent:create`` requests, read by any runner with capacity (group ``runners``)."""
        return f"{self.prefix}:cmd"

    def runner_commands(self, runner_id: str) -> str:
        """Commands for agents owned by one runner."""
        return f"{self.prefix}:runner:{runner_id}:cmd"

    def runner(self, runner_id: str) -> str:
        """Runner heartbeat (string with TTL, JSON: capacity, running, host, pid)."""
        return f"{self.prefix}:runner:{runner_id}"

    def runner_lock(self, runner_id: str) -> str:
        """Lock (SET NX PX) held while a runner's agents are reconciled or reaped."""
        return f"{self.prefix}:lock:runner:{runner_id}"

    @property
    def runners(self) -> str:
        """Sorted set of runner ids scored by last heartbeat (ms)."""
        return f"{self.prefix}:runners"

    @property
    def agent_stats(self) -> str:
        """Hash runner id → JSON of its agents' resource usage, merged by the collector."""
        return f"{self.prefix}:agent-stats"

    # -- metrics collector --------------------------------------------------------
    def collector(self, collector_id: str) -> str:
        """Collector heartbeat (string with TTL, JSON: id, host, pid, interval, last sample)."""
        return f"{self.prefix}:collector:{collector_id}"

    @property
    def collector_announcer(self) -> str:
        """The gateway that announces the collector's silence (SET NX PX, refreshed by its
        holder): several gateways, one alert."""
        return f"{self.prefix}:lock:collector-announcer"

    # -- agents -----------------------------------------------------------------
    def agent(self, agent_id: str) -> str:
        """Registry hash of one agent: owner, runner, name, model, status, pid, start."""
        return f"{self.prefix}:agent:{agent_id}"

    @property
    def agents(self) -> str:
        """Set of the live agent ids."""
        return f"{self.prefix}:agents"

    @property
    def agent_index(self) -> str:
        """Sorted set of every agent id, live or ended, scored by start time (ms): what
        ``agent:list`` reads. An ended agent's entry goes when its hash has expired (the
        list prunes it)."""
        return f"{self.prefix}:agent-index"

    def runner_agents(self, runner_id: str) -> str:
        """Set of the agent ids one runner owns."""
        return f"{self.prefix}:runner:{runner_id}:agents"

    def user_agents(self, user_id: str) -> str:
        """Set of the live agent ids one user owns (per-user agent limit)."""
        return f"{self.prefix}:user:{user_id}:agents"

    def user_message_rate(self, user_id: str, window: int) -> str:
        """Messages of one user in one rate window, summed over all gateways."""
        return f"{self.prefix}:rate:user-msg:{user_id}:{window}"

    def ip_message_rate(self, ip_key: str, window: int) -> str:
        """Messages from one client address (IPv6: its /64) in one rate window."""
        return f"{self.prefix}:rate:ip-msg:{ip_key}:{window}"

    def ip_connection_rate(self, ip_key: str, window: int) -> str:
        """New connections from one client address in one rate window."""
        return f"{self.prefix}:rate:ip-conn:{ip_key}:{window}"

    def agent_command_rate(self, agent_id: str, second: int) -> str:
        """Counter of commands sent to an agent in one wall-clock second (all gateways)."""
        return f"{self.prefix}:rate:agent-cmd:{agent_id}:{second}"

    # -- gateways and sessions -------------------------------------------------
    def reply_channel(self, gateway_id: str) -> str:
        """Pub/sub channel on which runners answer one gateway's requests."""
        return f"{self.prefix}:reply:{gateway_id}"

    def gateway_probe(self, gateway_id: str) -> str:
        """Pub/sub channel a gateway publishes to itself to prove its subscription works."""
        return f"{self.prefix}:probe:{gateway_id}"

    def session(self, session_id: str) -> str:
        return f"{self.prefix}:session:{session_id}"
