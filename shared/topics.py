"""The subscription vocabulary: topic names, subscription kinds, filter names and event tags.

One module, so that the producers that tag events (runner, collector, gateway alerts), the
gateway that routes them and the SDK that filters them agree on every word:

======================  =======================  ==========================================
topic                   subscription kind        filters (``subscribe:*`` ``filters``)
======================  =======================  ==========================================
``agent:{agentId}``     ``agent`` + ``agentId``  :data:`AGENT_EVENT_KINDS`
``agents``              ``agent``                :data:`AGENT_EVENT_KINDS` (lifecycle only)
``metrics``             ``metrics``              :data:`METRICS_SECTIONS`
``logs``                ``logs``                 :data:`ALERT_LEVELS`, :data:`ALERT_CATEGORIES`
======================  =======================  ==========================================

Every published event carries *tags*: its kind or level/category (the filter names above),
:func:`user_tag` of the owner for events about an agent (visibility), and
:data:`LOW_PRIORITY_TAG` for events a slow consumer may skip. No I/O here.
"""

from __future__ import annotations

from typing import Literal, get_args

METRICS_TOPIC = "metrics"
LOGS_TOPIC = "logs"
AGENTS_TOPIC = "agents"
#: Prefix of one agent's topic (see :func:`agent_topic`).
AGENT_TOPIC_PREFIX = "agent:"

SubscriptionKind = Literal["agent", "metrics", "logs"]
SUBSCRIPTION_KINDS: tuple[SubscriptionKind, ...] = get_args(SubscriptionKind)
#: A ``subscribe:*`` message type → the kind of subscription it asks for.
SUBSCRIBE_TYPES: dict[str, SubscriptionKind] = {f"subscribe:{k}": k for k in SUBSCRIPTION_KINDS}

AGENT_EVENT_KINDS = frozenset({"stdout", "stderr", "status", "error", "created"})
#: Lifecycle events of an agent (what ``subscribe:agent`` without ``agentId`` delivers).
LIFECYCLE_KINDS = frozenset({"created", "status", "error"})
METRICS_SECTIONS = frozenset({"system", "agents"})
#: In order of severity (the CLI's ``--level`` keeps this one and those after it).
ALERT_LEVEL_ORDER = ("info", "warning", "error", "critical")
ALERT_LEVELS = frozenset(ALERT_LEVEL_ORDER)
ALERT_CATEGORY_ORDER = ("resource", "performance", "security", "agent")
ALERT_CATEGORIES = frozenset(ALERT_CATEGORY_ORDER)

#: Tag of events that a slow consumer may be spared (superseded by the next one).
LOW_PRIORITY_TAG = "p:low"
USER_TAG_PREFIX = "user:"


def agent_topic(agent_id: str) -> str:
    """The topic carrying one agent's output, status and errors."""
    return AGENT_TOPIC_PREFIX + agent_id


def agent_of_topic(topic: str) -> str | None:
    """The agent id of an ``agent:{id}`` topic, else None."""
    return topic[len(AGENT_TOPIC_PREFIX) :] if topic.startswith(AGENT_TOPIC_PREFIX) else None


def user_tag(owner: str) -> str:
    """The tag that says which user owns the agent an event is about."""
    return USER_TAG_PREFIX + owner


def owner_of(tags: tuple[str, ...]) -> str | None:
    """The owner an event's tags name (:func:`user_tag`), if any."""
    for tag in tags:
        if tag.startswith(USER_TAG_PREFIX):
            return tag[len(USER_TAG_PREFIX) :]
    return None


def subscription_kind(value: str) -> SubscriptionKind | None:
    """``value`` as a :data:`SubscriptionKind` (a stored session's), or None if unknown."""
    for kind in SUBSCRIPTION_KINDS:
        if kind == value:
            return kind
    return None
