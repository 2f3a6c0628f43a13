"""MultiGrid source: seeded random walks of A agents in an empty room, with every agent's action and cell.

One call to :func:`render_episode` makes one :class:`~ingest.episode.Episode`:

    frames    [T, H, W, 3] uint8, H = W = grid cells * tile_size (8 * 16 = 128 by default)
    actions   [T, A] int64, indices into :data:`ACTION_NAMES`
    positions [T, A, 2] int64, (x, y) grid cells

``frames[t]`` and ``positions[t]`` show the state at step t; ``actions[t]`` is applied at step t and produces
step t + 1 (the last action's result is not part of the episode).

Two departures from the stock ``multigrid`` 0.1.0 environment, both needed for usable world-model data:

- Reaching the green goal does nothing. Stock Empty envs terminate *every* agent when any one of them steps
  on the goal (``success_termination_mode='any'``); terminated agents stop acting and are no longer drawn,
  so the rest of the episode would be an empty room and the remaining action labels would be no-ops.
- The env's RNGs are reseeded explicitly: ``reset(seed=s)`` in 0.1.0 reseeds gymnasium's generator (agent
  order within a step) but not the generator ``_gen_grid`` draws start positions from.

Rendering: by default frames come from :func:`_compose_frames`, a vectorised renderer that gathers per-tile
sprites (drawn once per process by the package's own ``Grid.render_tile``) for all T steps at once. It is
pixel-identical to ``env.render()`` for the ``MultiGrid-Empty-*`` family (tested), and much faster than the
package renderer, which redraws the grid tile by tile in Python each frame.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

# gymnasium first: it sets PYGAME_HIDE_SUPPORT_PROMPT, which keeps multigrid's pygame import quiet.
import gymnasium
import numpy as np
from multigrid.core.actions import Action
from multigrid.core.agent import Agent, AgentState
from multigrid.core.constants import DIR_TO_VEC, Color, Direction
from multigrid.core.grid import Grid
from multigrid.core.world_object import WorldObj
from multigrid.envs import CONFIGURATIONS, EmptyEnv

from ingest.episode import Episode

ACTION_NAMES: tuple[str, ...] = tuple(a.name for a in Action)  # left right forward pickup drop toggle done
VARIANTS = ("independent", "correlated")
MIN_AGENTS, MAX_AGENTS = 2, 16

# Behaviour policy (see _Policy): mostly forward so agents travel, turns to change heading, and a little
# `done` as an explicit "stay". pickup/drop/toggle are left out: in an empty room they are no-ops like `done`,
# and more labels for one effect would only blur what an action means.
POLICY_ACTIONS = np.array([Action.left, Action.right, Action.forward, Action.done], dtype=np.int64)
POLICY_PROBS = np.array([0.2, 0.2, 0.55, 0.05])  # left, right, forward, done

_EMPTY_ENV_IDS = tuple(k for k, (cls, _) in CONFIGURATIONS.items() if cls is EmptyEnv)
_NUM_COLORS = len(Color)
_NUM_AGENT_CODES = 1 + _NUM_COLORS * len(Direction)  # 0 = no agent, else 1 + color * 4 + dir


@dataclass(frozen=True)
class MultiGridConfig:
    """One MultiGrid episode family; validated on construction.

    variant: "independent" (every agent samples its own actions) or "correlated" (agents 0 and 1 execute the
    identical action at every step, the others stay independent).
    persistence: probability that an agent repeats its previous forward or done instead of drawing afresh
    (turns and blocked forwards are never repeated, see ``_Policy``).
    highlight: draw each agent's view square lighter (the package default). False draws agents on a plain
    floor, so a frame changes only where an agent moves or turns (the CPU-sized comparison preset).
    fast_render: use the vectorised renderer (pixel-identical); False uses the package's ``env.render()``.
    """

    env_id: str = "MultiGrid-Empty-8x8-v0"
    num_agents: int = 4
    variant: str = "independent"
    episode_len: int = 64
    tile_size: int = 16
    persistence: float = 0.8
    fps: float = 8.0
    fast_render: bool = True
    highlight: bool = True

    def __post_init__(self) -> None:
        if self.env_id not in _EMPTY_ENV_IDS:
            raise ValueError(
                f"env_id {self.env_id!r} is not supported: the renderer and the disabled goal "
                f"termination are only verified for {', '.join(_EMPTY_ENV_IDS)}"
            )
        if not _is_int(self.num_agents) or not MIN_AGENTS <= self.num_agents <= MAX_AGENTS:
            raise ValueError(
                f"num_agents must be an int in [{MIN_AGENTS}, {MAX_AGENTS}], got {self.num_agents!r}"
            )
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if not _is_int(self.episode_len) or self.episode_len < 1:
            raise ValueError(f"episode_len must be an int >= 1, got {self.episode_len!r}")
        if not _is_int(self.tile_size) or self.tile_size < 1:
            raise ValueError(f"tile_size must be an int >= 1 (pixels per grid cell), got {self.tile_size!r}")
        if not 0.0 <= self.persistence <= 1.0:
            raise ValueError(f"persistence must be a probability in [0, 1], got {self.persistence!r}")
        if not isinstance(self.highlight, bool):
            raise ValueError(f"highlight must be true or false, got {self.highlight!r}")
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps!r}")


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def frame_shape(cfg: MultiGridConfig) -> tuple[int, int, int]:
    """(H, W, 3) of every frame :func:`render_episode` returns for ``cfg``."""
    env = _make_env(cfg.env_id, cfg.num_agents, cfg.tile_size)
    return env.height * cfg.tile_size, env.width * cfg.tile_size, 3


def render_episode(cfg: MultiGridConfig, seed: int) -> Episode:
    """Roll out the behaviour policy for ``cfg.episode_len`` steps and render every step.

    Deterministic per (cfg, seed): start cells and headings, the action sequence and the env's per-step agent
    order all derive from ``seed``. The env is cached per process, so this is not thread-safe.
    """
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    seed = int(seed)
    env = _make_env(cfg.env_id, cfg.num_agents, cfg.tile_size)
    env.highlight = cfg.highlight  # read by env.render(); the env is cached across configs
    actions, positions, directions, frames = _rollout(env, cfg, seed, render=not cfg.fast_render)
    if cfg.fast_render:
        frames = _compose_frames(env, positions, directions, cfg.highlight)
    if frames.shape[1:] != frame_shape(cfg):
        raise RuntimeError(f"rendered frames {frames.shape[1:]} do not match frame_shape {frame_shape(cfg)}")
    info = {
        "env_id": cfg.env_id,
        "num_agents": cfg.num_agents,
        "variant": cfg.variant,
        "seed": seed,
        "tile_size": cfg.tile_size,
        "persistence": cfg.persistence,
        "highlight": cfg.highlight,
        "action_names": list(ACTION_NAMES),
        # Colours repeat every 6 agents (multigrid cycles its palette): record them so clips are explainable.
        "agent_colors": [Color.from_index(int(c)).value for c in _agent_colors(env)],
    }
    return Episode(frames=frames, actions=actions, positions=positions, fps=cfg.fps, info=info)


@functools.lru_cache(maxsize=8)
def _make_env(env_id: str, num_agents: int, tile_size: int) -> EmptyEnv:
    """The unwrapped env, cached per process and key (the first reset in a process loads numba code)."""
    return _new_env(env_id, num_agents, tile_size)


def _new_env(env_id: str, num_agents: int, tile_size: int) -> EmptyEnv:
    """A fresh unwrapped env with the goal termination disabled (see the module docstring)."""
    # Unwrapped: gymnasium's passive checker warns on every step about multigrid's dict-valued rewards.
    env = gymnasium.make(
        env_id, agents=num_agents, agent_start_pos=None, render_mode="rgb_array", tile_size=tile_size
    ).unwrapped
    assert isinstance(env, EmptyEnv), type(env)
    # The fast renderer's highlight (every cell of each agent's view square) is only right without occlusion.
    assert all(agent.see_through_walls for agent in env.agents)
    env.on_success = lambda *args, **kwargs: None  # see module docstring: the goal must not end the episode
    return env


def _reset(env: EmptyEnv, cfg: MultiGridConfig, seed: int) -> _Policy:
    """Reset ``env`` to the start state of episode ``seed``; -> the episode's behaviour policy."""
    env_ss, policy_ss = np.random.SeedSequence(seed).spawn(2)  # independent streams for env and policy
    # reset(seed=...) would reseed only gymnasium's generator; _gen_grid draws from RandomMixin's private one.
    env_rng = np.random.default_rng(env_ss)
    env.np_random = env_rng
    env._RandomMixin__np_random = env_rng
    env.reset()  # no seed: keep the generator installed above
    return _Policy(cfg, np.random.default_rng(policy_ss))


def _rollout(
    env: EmptyEnv, cfg: MultiGridConfig, seed: int, render: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Reset the env and run the behaviour policy (see :class:`_Policy`) for ``cfg.episode_len`` steps.

    Returns actions [T, A] int64, positions [T, A, 2] int64, directions [T, A] int64 (0 right, 1 down, 2 left,
    3 up) and, with ``render``, the package-rendered frames [T, H, W, 3] uint8 (else None).
    """
    policy = _reset(env, cfg, seed)
    t_len, a = cfg.episode_len, cfg.num_agents
    actions = np.empty((t_len, a), dtype=np.int64)
    positions = np.empty((t_len, a, 2), dtype=np.int64)
    directions = np.empty((t_len, a), dtype=np.int64)
    frames = [] if render else None
    for t in range(t_len):
        positions[t] = env.agent_states.pos
        directions[t] = env.agent_states.dir
        if frames is not None:
            frames.append(env.render())
        actions[t] = policy.act(t, actions[t - 1] if t else None, positions[t - 1 : t + 1])
        if t + 1 < t_len:  # the last action's outcome is not part of the episode
            env.step({i: int(act) for i, act in enumerate(actions[t])})
    assert not env.agent_states.terminated.any(), "an agent terminated; the goal patch did not hold"
    return actions, positions, directions, (np.stack(frames) if frames is not None else None)


class Room:
    """A live MultiGrid room for control (``train/plan.py``): the env, start states, behaviour policy and
    renderer of :func:`render_episode`, stepped one action at a time. Its env is its own (not the per-process
    cache), so imagined steps (``set_poses`` then ``step``) never disturb an episode being rendered.

    Poses: positions [A, 2] int64 (x, y) and directions [A] int64; ``step`` applies one action per agent (the
    env's own rules: walls and other agents block, agents act in a random order drawn from the episode seed).
    """

    def __init__(self, cfg: MultiGridConfig, seed: int, policy_seed: int | None = None) -> None:
        """The start state of episode ``seed``; the behaviour policy's draws come from ``policy_seed``
        when given (another stream over the same start), else from the episode's own."""
        self.cfg = cfg
        self.env = _new_env(cfg.env_id, cfg.num_agents, cfg.tile_size)
        self.policy = _reset(self.env, cfg, seed)
        if policy_seed is not None:
            self.policy = _Policy(cfg, np.random.default_rng(policy_seed))
        self.t = 0
        self._prev: np.ndarray | None = None
        self._recent = np.repeat(self.poses()[0][None], 2, axis=0)

    def poses(self) -> tuple[np.ndarray, np.ndarray]:
        states = self.env.agent_states
        return np.array(states.pos, dtype=np.int64), np.array(states.dir, dtype=np.int64)

    def set_poses(self, positions: np.ndarray, directions: np.ndarray) -> None:
        self.env.agent_states.pos = positions
        self.env.agent_states.dir = directions

    def step(self, actions: np.ndarray) -> None:
        """One env step with actions [A] (indices into ``ACTION_NAMES``)."""
        self.env.handle_actions({i: Action(int(a)) for i, a in enumerate(actions)})
        self._recent = np.stack([self._recent[1], self.poses()[0]])
        self._prev = np.asarray(actions, dtype=np.int64)
        self.t += 1

    def behaviour_actions(self) -> np.ndarray:
        """[A] actions of the data's behaviour policy (:class:`_Policy`) at the current step; needs
        ``cfg.episode_len`` > the number of steps taken."""
        if self.t >= self.cfg.episode_len:
            raise ValueError(f"the behaviour policy was drawn for {self.cfg.episode_len} steps (episode_len)")
        return self.policy.act(self.t, self._prev, self._recent)

    def render(self, positions: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """Frames of poses: positions [T, A, 2], directions [T, A] -> [T, H, W, 3] uint8 (pixel-identical
        to the episodes' frames)."""
        return _compose_frames(self.env, positions, directions, self.cfg.highlight)

    def frame(self) -> np.ndarray:
        """The current frame [H, W, 3] uint8."""
        positions, directions = self.poses()
        return self.render(positions[None], directions[None])[0]


class _Policy:
    """Behaviour policy: each agent is a persistent random walk over :data:`POLICY_ACTIONS`.

    At t = 0 an agent draws from ``POLICY_PROBS``. Afterwards it repeats a ``forward`` or ``done`` with
    probability ``cfg.persistence`` and otherwise draws afresh, with two exceptions that keep motion visible:
    a turn is never repeated (a run of turns only spins the agent in place), and a ``forward`` that was just
    blocked (the agent did not move: it faces a wall) is followed by a turn, left or right at random. With a
    plain "repeat anything" walk, agents in the 8x8 room moved on ~11% of steps (~77% of forwards pushed into
    a wall) and ~3% never moved in 64 steps; with these rules they move on ~41% of steps and all of them move.
    In the correlated variant agent 1 then copies agent 0's action. All random numbers are drawn up front, so
    the stream does not depend on the rollout.
    """

    def __init__(self, cfg: MultiGridConfig, rng: np.random.Generator) -> None:
        shape = (cfg.episode_len, cfg.num_agents)
        self.fresh = rng.choice(POLICY_ACTIONS, size=shape, p=POLICY_PROBS)
        self.keep = rng.random(shape) < cfg.persistence
        self.turn = np.where(rng.random(shape) < 0.5, int(Action.left), int(Action.right))
        self.correlated = cfg.variant == "correlated"

    def act(self, t: int, prev: np.ndarray | None, recent_pos: np.ndarray) -> np.ndarray:
        """[A] actions for step t, given the previous ones (None at t = 0) and positions[t-1 : t+1]."""
        if prev is None:
            out = self.fresh[0].copy()
        else:
            blocked = (prev == Action.forward) & (recent_pos[0] == recent_pos[1]).all(-1)
            turned = (prev == Action.left) | (prev == Action.right)
            out = np.where(self.keep[t] & ~turned, prev, self.fresh[t])
            out = np.where(blocked, self.turn[t], out)
        if self.correlated:
            out[1] = out[0]
        return out


def _agent_colors(env: EmptyEnv) -> np.ndarray:
    """[A] Color indices (multigrid cycles through its 6 colours by agent index)."""
    return np.asarray(env.agent_states)[:, AgentState.COLOR].astype(np.int64)


def _view_offsets(view_size: int) -> np.ndarray:
    """[4, V*V, 2] (dx, dy) of the cells an agent facing each direction highlights, as in get_full_render."""
    out = np.empty((4, view_size * view_size, 2), dtype=np.int64)
    vis_i, vis_j = np.meshgrid(np.arange(view_size), np.arange(view_size), indexing="ij")
    for d in range(4):
        f = np.asarray(DIR_TO_VEC[d])
        r = np.array((-f[1], f[0]))
        top_left = f * (view_size - 1) - r * (view_size // 2)
        cells = top_left - f * vis_j[..., None] + r * vis_i[..., None]
        out[d] = cells.reshape(-1, 2)
    return out


@functools.cache
def _sprite(obj_code: tuple[int, ...], highlight: bool, agent_code: int, tile_size: int) -> np.ndarray:
    """[ts, ts, 3] uint8 tile drawn by the package itself, so sprites match env.render() by construction."""
    obj = WorldObj.from_array(np.array(obj_code))  # None for an empty cell
    agent = None
    if agent_code:
        agent = Agent(index=0)
        # Write the index: the package's own colour setter mangles Color members (np.vectorize -> 'Col').
        agent.state[..., AgentState.COLOR] = (agent_code - 1) // len(Direction)
        agent.state.dir = (agent_code - 1) % len(Direction)
    tile = Grid.render_tile(obj, agent=agent, highlight=highlight, tile_size=tile_size)
    return tile.astype(np.uint8)  # float64 -> uint8 truncates, exactly like Grid.render's slice assignment


def _compose_frames(
    env: EmptyEnv, positions: np.ndarray, directions: np.ndarray, highlight_views: bool = True
) -> np.ndarray:
    """Vectorised ``env.render()`` for every step of a rollout: [T, H * ts, W * ts, 3] uint8.

    positions [T, A, 2] and directions [T, A] as returned by :func:`_rollout`. Assumes a static grid (true for
    the Empty envs under this policy: nothing is ever picked up, dropped or toggled) and no terminated agents.
    Each cell's tile is keyed by (static object, highlighted, agent colour and direction); the package's
    Grid.render draws the agent with the highest index when several share a cell, and so does this.
    """
    t_len, num_agents = directions.shape
    ts = env.tile_size
    # Static background: each cell's object as a small id; grid.state is [W, H, 3], images are indexed [y, x].
    obj_codes, obj_ids = np.unique(env.grid.state.reshape(-1, WorldObj.dim), axis=0, return_inverse=True)
    obj_ids = obj_ids.reshape(env.width, env.height).T  # [H, W]
    h, w = obj_ids.shape

    tt = np.arange(t_len)
    agent_code = np.zeros((t_len, h, w), dtype=np.int64)
    colors = _agent_colors(env)
    for a in range(num_agents):  # ascending: later agents overwrite earlier ones, as in Grid.render
        code = 1 + colors[a] * len(Direction) + directions[:, a]
        agent_code[tt, positions[:, a, 1], positions[:, a, 0]] = code

    cells = positions[:, :, None, :] + _view_offsets(env.agents[0].view_size)[directions]  # [T, A, V*V, 2]
    inside = (cells[..., 0] >= 0) & (cells[..., 0] < w) & (cells[..., 1] >= 0) & (cells[..., 1] < h)
    highlight = np.zeros((t_len, h, w), dtype=np.int64)
    t_idx = np.broadcast_to(tt[:, None, None], inside.shape)
    if highlight_views:
        highlight[t_idx[inside], cells[..., 1][inside], cells[..., 0][inside]] = 1

    key = (obj_ids[None] * 2 + highlight) * _NUM_AGENT_CODES + agent_code  # [T, H, W]
    uniq, inv = np.unique(key, return_inverse=True)
    sprite_list = []
    for k in uniq.tolist():
        obj_hl, code = divmod(k, _NUM_AGENT_CODES)
        obj, hl = divmod(obj_hl, 2)
        sprite_list.append(_sprite(tuple(obj_codes[obj].tolist()), bool(hl), code, ts))
    sprites = np.stack(sprite_list)  # [U, ts, ts, 3]
    tiles = sprites[inv.reshape(t_len, h, w)]  # [T, H, W, ts, ts, 3]
    return np.ascontiguousarray(tiles.transpose(0, 1, 3, 2, 4, 5)).reshape(t_len, h * ts, w * ts, 3)
