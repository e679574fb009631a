// NetBuilder's canvas: React Flow as a Streamlit component (protocol v1, spoken by hand).
//
// Python owns the graph. It sends a compact state (nodes with their text already rendered,
// edges, a version, `ack`: the last event it applied); this side sends events, never states:
// select, deselect, move, connect, delete. An event is shown at once (optimistically) and
// kept in a queue until Python acknowledges it, so a state that arrives before Python saw a
// later event is drawn with that event re-applied, and a rerun that drops a value loses nothing.
// Python's state always wins: what it refused disappears when its answer arrives.
// With `read_only` (the Train page's live graph) it only shows: no events, keys or menus; with
// `pickable` as well (the step view), a click on a node is reported as {pick: id, seq}.
// A click on the page's palette (Streamlit pills beside the frame) is drawn at once too, from
// the placement plan Python sends (`add_plans`), until Python's answer for that click arrives.

import React, {
  createContext,
  memo,
  useCallback,
  useContext,
  useEffect,
  useLayoutEffect,
  useMemo,
  useRef,
  useState,
} from "react";
import { createRoot } from "react-dom/client";
import {
  Controls,
  Handle,
  Position,
  ReactFlow,
  ReactFlowProvider,
  useReactFlow,
  useStore,
} from "@xyflow/react";
import "@xyflow/react/dist/style.css";
import "./canvas.css";

// ---------------------------------------------------------------------------------------------
// Streamlit's component protocol: one message in (render), three out.

const post = (type, data) =>
  window.parent.postMessage({ isStreamlitMessage: true, type, ...data }, "*");
const announceReady = () => post("streamlit:componentReady", { apiVersion: 1 });
const setFrameHeight = (height) => post("streamlit:setFrameHeight", { height });
const sendValue = (value) => post("streamlit:setComponentValue", { value, dataType: "json" });

// ---------------------------------------------------------------------------------------------
// Python's state -> React Flow's nodes and edges
//
// Groups (an imported model's modules): a closed group is a "box", one face for all it holds;
// an open one a "frame" round its faces, which React Flow places inside it (parentId, at
// positions relative to it). Python sends every face's absolute place; `where` maps an id to it.

const FACE_TYPES = { group: "box", frame: "frame" };
const isGroup = (node) => node.type === "box" || node.type === "frame";

function whereOf(rawNodes) {
  const where = {};
  for (const n of rawNodes) where[n.id] = { x: n.x, y: n.y };
  return where;
}

function localPlace(n, where) {
  // A face inside a frame is placed relative to the frame, as React Flow wants it.
  const origin = n.parent ? where[n.parent] : null;
  return origin ? { x: n.x - origin.x, y: n.y - origin.y } : { x: n.x, y: n.y };
}

const toNode = (n, where = {}) => ({
  id: n.id,
  type: FACE_TYPES[n.kind] || "layer",
  position: localPlace(n, where),
  ...(n.parent ? { parentId: n.parent } : {}),
  data: n,
  className: faceClass(n),
  style:
    n.kind === "frame"
      ? { width: n.w, height: n.h }
      : n.fill
        ? { background: n.fill, color: n.ink } // the live graph's colours
        : undefined,
  selectable: false,
  deletable: false,
});

const toEdge = (e) => ({
  id: e.id,
  source: e.source,
  target: e.target,
  ...(e.joined ? { data: { joined: true } } : {}),
  label: e.label || undefined,
  className: e.selected ? "nb-edge-selected" : "",
  markerEnd: { type: "arrowclosed", color: e.selected ? "#2563eb" : "#64748b" },
  labelBgPadding: [3, 2],
  selectable: false,
  deletable: false,
  focusable: false,
});

function sameFields(a, b) {
  const keys = Object.keys(b);
  if (Object.keys(a).length !== keys.length) return false;
  for (const key of keys) if (a[key] !== b[key]) return false;
  return true;
}

function reuseNode(old, raw, where) {
  if (!old) return toNode(raw, where);
  const place = localPlace(raw, where);
  if (
    sameFields(old.data, raw) &&
    old.position.x === place.x &&
    old.position.y === place.y &&
    old.className === faceClass(raw)
  )
    return old;
  const node = toNode(raw, where);
  return old.measured ? { ...node, measured: old.measured } : node;
}

function reuseEdge(old, raw) {
  if (
    old &&
    old.source === raw.source &&
    old.target === raw.target &&
    old.label === (raw.label || undefined) &&
    old.className === (raw.selected ? "nb-edge-selected" : "")
  )
    return old;
  return toEdge(raw);
}

function applyEvent(view, event) {
  // What an event looks like before Python answers: the same rule Python applies, minus checks.
  const { nodes, edges } = view;
  switch (event.kind) {
    case "select":
      return {
        nodes: nodes.map((n) => withSelection(n, n.id === event.node)),
        edges: edges.map((e) => withEdgeSelection(e, false)),
      };
    case "select_edge":
      return {
        nodes: nodes.map((n) => withSelection(n, false)),
        edges: edges.map((e) => withEdgeSelection(e, e.id === event.edge)),
      };
    case "deselect":
      return {
        nodes: nodes.map((n) => withSelection(n, false)),
        edges: edges.map((e) => withEdgeSelection(e, false)),
      };
    case "move": {
      // `local`: where React Flow dropped each face (inside its frame); Python reads `positions`.
      const places = event.local || event.positions;
      return {
        nodes: nodes.map((n) =>
          places[n.id] ? { ...n, position: { x: places[n.id][0], y: places[n.id][1] } } : n,
        ),
        edges,
      };
    }
    case "connect":
      return {
        nodes,
        edges: [
          ...edges,
          toEdge({ id: `new:${event.source}->${event.target}`, ...event, label: "" }),
        ],
      };
    case "delete_nodes": {
      // As Python does: a node with one input and one output is bridged over.
      const gone = new Set(event.nodes);
      const kept = edges.filter((e) => !gone.has(e.source) && !gone.has(e.target));
      for (const id of event.nodes) {
        const into = edges.filter((e) => e.target === id && !gone.has(e.source));
        const out = edges.filter((e) => e.source === id && !gone.has(e.target));
        if (into.length === 1 && out.length === 1) {
          const [source, target] = [into[0].source, out[0].target];
          const label = into[0].label;
          kept.push(toEdge({ id: `new:${source}->${target}`, source, target, label }));
        }
      }
      return { nodes: nodes.filter((n) => !gone.has(n.id)), edges: kept };
    }
    case "delete_edge":
      return { nodes, edges: edges.filter((e) => e.id !== event.edge) };
    case "add":
      return addLayer(view, event);
    default:
      return view;
  }
}

const GHOST = "+"; // the id prefix of a layer drawn before the page named it
const GHOST_TTL_MS = 8000; // how long such a layer waits for the page's answer
const ghostId = ({ type, seq }) => `${GHOST}${type}-${seq}`;

function addLayer({ nodes, edges }, { plan, type, seq }) {
  // The placement Python computed (edit.placement): below the anchor, spliced into its one
  // outgoing edge with what follows moved down a row, else a new branch.
  const id = ghostId({ type, seq });
  const shifted = new Set(plan.shifted);
  const drawn = nodes.map((n) => {
    const moved = shifted.has(n.id)
      ? { ...n, position: { x: n.position.x, y: n.position.y + plan.row } }
      : n;
    return withSelection(moved, false);
  });
  const kind = type === "Input" ? "input" : type === "Output" ? "output" : "layer";
  const face = { id, x: plan.x, y: plan.y, kind, type, name: "", params: "", shape: "…" };
  drawn.push({ ...toNode({ ...face, count: "", note: "", status: "ok", selected: true }) });
  let wired = edges.map((e) => withEdgeSelection(e, false));
  if (plan.anchor !== null) {
    const old = plan.splice === null ? null : wired.find((e) => e.id === plan.splice);
    if (old) {
      wired = wired.filter((e) => e !== old);
      wired.push(toEdge({ id: `${id}:in`, source: plan.anchor, target: id, label: old.label }));
      wired.push(toEdge({ id: `${id}:out`, source: id, target: old.target, label: "" }));
    } else {
      wired.push(toEdge({ id: `${id}:in`, source: plan.anchor, target: id, label: "" }));
    }
  }
  return { nodes: drawn, edges: wired };
}

function faceClass({ status, selected, fill }) {
  // On React Flow's own node element, which carries the face's border and background.
  return `nb-${status}${selected ? " nb-selected" : ""}${fill ? " nb-filled" : ""}`;
}

function withSelection(node, selected) {
  const className = faceClass({ ...node.data, selected });
  return node.className === className ? node : { ...node, className };
}

function withEdgeSelection(edge, selected) {
  const className = selected ? "nb-edge-selected" : "";
  if (edge.className === className) return edge;
  return {
    ...edge,
    className,
    markerEnd: { type: "arrowclosed", color: selected ? "#2563eb" : "#64748b" },
  };
}

// ---------------------------------------------------------------------------------------------
// A layer's face: type and name, key params, output shape and count, its first problem.

const LayerNode = memo(function LayerNode({ data }) {
  return (
    <div className="nb-node">
      {data.kind !== "input" && <Handle type="target" position={Position.Top} />}
      <div className="nb-title">
        <b>{data.type}</b>
        {data.name ? <span className="nb-muted"> {data.name}</span> : null}
      </div>
      {data.params ? <div className="nb-params">{data.params}</div> : null}
      {data.shape ? (
        <div className="nb-shape">
          <code>{data.shape}</code>
          <span className="nb-muted">{data.count}</span>
        </div>
      ) : null}
      {data.note ? (
        <div className={`nb-note nb-note-${data.note_severity}`} title={data.note}>
          {data.note}
        </div>
      ) : null}
      {data.kind !== "output" && <Handle type="source" position={Position.Bottom} />}
    </div>
  );
});

// A group: its name, how many layers, shapes in and out, its parameter count, and the button
// that opens or closes it (as a double-click does).
const Groups = createContext({ toggle: () => {}, readOnly: true });

function ToggleButton({ data }) {
  const { toggle, readOnly } = useContext(Groups);
  if (readOnly) return null;
  return (
    <button
      type="button"
      className="nb-toggle nodrag"
      aria-label={data.toggle_label}
      aria-expanded={data.open ? "true" : "false"}
      title={data.toggle_label}
      onClick={(event) => {
        event.stopPropagation();
        toggle(data.id);
      }}
    >
      {data.open ? "\u2212" : "+"}
    </button>
  );
}

const GroupBox = memo(function GroupBox({ data }) {
  return (
    <div className="nb-node">
      <Handle type="target" position={Position.Top} />
      <div className="nb-title nb-group-title">
        <ToggleButton data={data} />
        <b>{data.type}</b>
        {data.name ? <span className="nb-muted"> {data.name}</span> : null}
      </div>
      <div className="nb-params">
        {data.params}
        {data.count ? ` · ${data.count}` : ""}
      </div>
      <div className="nb-shape">
        <code>{data.shape}</code>
      </div>
      {data.note ? (
        <div className={`nb-note nb-note-${data.note_severity}`} title={data.note}>
          {data.note}
        </div>
      ) : null}
      <Handle type="source" position={Position.Bottom} />
    </div>
  );
});

const GroupFrame = memo(function GroupFrame({ data }) {
  return (
    <div
      className="nb-frame-title"
      title={[data.type, data.name, data.params, data.shape, data.count].filter(Boolean).join(" · ")}
    >
      <ToggleButton data={data} />
      <b>{data.type}</b>
      <span className="nb-muted nb-frame-count">{data.count || data.params}</span>
    </div>
  );
});

const NODE_TYPES = { layer: LayerNode, box: GroupBox, frame: GroupFrame };

function scrollPage(dx, dy) {
  // Streamlit scrolls its main block, not the window; the frame is served by the same server.
  try {
    const page = window.parent.document;
    const main = page.querySelector('[data-testid="stMain"]') || page.scrollingElement;
    if (main) main.scrollBy({ left: dx, top: dy });
  } catch (error) {
    /* another origin's page: nothing to scroll from here */
  }
}
const READ_ONLY = { nodesDraggable: false, nodesConnectable: false, edgesFocusable: false };
const MARGIN = 40;
const VIRTUALIZE = 150; // above this many nodes only those in view are drawn (and measured)
const NODE_HEIGHT = 64; // a node not measured yet (out of view) is counted this tall

function placeOf(n) {
  // Absolute: a face inside a frame is drawn where Python placed it (its position is relative).
  return n.parentId ? { x: n.data.x, y: n.data.y } : n.position;
}

function boundsOf(nodes, nodeWidth) {
  let [left, top, right, bottom] = [Infinity, Infinity, -Infinity, -Infinity];
  for (const n of nodes) {
    const { x, y } = placeOf(n);
    left = Math.min(left, x);
    top = Math.min(top, y);
    right = Math.max(right, x + (n.data.w ?? n.measured?.width ?? nodeWidth));
    bottom = Math.max(bottom, y + (n.data.h ?? n.measured?.height ?? NODE_HEIGHT));
  }
  return { x: left, y: top, width: right - left, height: bottom - top };
}

// ---------------------------------------------------------------------------------------------
// The canvas

function Canvas({ args }) {
  const readOnly = Boolean(args.read_only);
  const flow = useReactFlow();
  const [view, setView] = useState(() => ({
    nodes: args.nodes.map((n) => toNode(n, whereOf(args.nodes))),
    edges: args.edges.map(toEdge),
    version: args.version, // the state it was drawn from
  }));
  const drawEvent = (event) =>
    setView((current) => ({ ...applyEvent(current, event), version: current.version }));
  const [menu, setMenu] = useState(null); // {kind: "node"|"edge", id, x, y}
  const ghosts = useRef([]); // palette clicks drawn before the page's answer: {seq, round, ...}
  const pending = useRef([]); // events sent and not yet acknowledged, oldest first
  const [pendingCount, setPendingCount] = useState(0); // shown as data-pending: 0 = settled
  const lastSeq = useRef(0);
  const shown = useRef({ version: null, ack: null, tick: null });
  const [tick, setTick] = useState(0); // grows to redraw the last state (a ghost expired)
  const selected = useRef({ node: null, edge: null });
  const fitted = useRef(null);
  const revealed = useRef(null);
  const width = useStore((s) => s.width);
  const height = useStore((s) => s.height);
  const allMeasured = useStore((s) => {
    if (s.nodeLookup.size === 0) return false;
    for (const node of s.nodeLookup.values()) if (!node.measured?.height) return false;
    return true;
  });

  // A new state from Python (a new version, or an acknowledgement): drawn, with the events it
  // has not seen yet applied on top.
  useLayoutEffect(() => {
    const now = shown.current;
    if (now.version === args.version && now.ack === args.ack && now.tick === tick) return;
    shown.current = { version: args.version, ack: args.ack, tick };
    pending.current = pending.current.filter((event) => event.seq > (args.ack || 0));
    ghosts.current = ghosts.current.filter((ghost) => ghost.round >= args.palette_round);
    setPendingCount(pending.current.length + ghosts.current.length);
    const replay = [...pending.current, ...ghosts.current];
    setView((current) => {
      // Unchanged nodes and edges keep their objects (React Flow skips them, and does not
      // measure them again); a changed node keeps its measured size until React Flow re-reads it.
      const oldNodes = new Map(current.nodes.map((n) => [n.id, n]));
      const oldEdges = new Map(current.edges.map((e) => [e.id, e]));
      const where = whereOf(args.nodes);
      let next = {
        nodes: args.nodes.map((raw) => reuseNode(oldNodes.get(raw.id), raw, where)),
        edges: args.edges.map((raw) => reuseEdge(oldEdges.get(raw.id), raw)),
      };
      for (const event of replay) next = applyEvent(next, event);
      return { ...next, version: args.version };
    });
    const chosenNode = args.nodes.find((n) => n.selected);
    const chosenEdge = args.edges.find((e) => e.selected);
    selected.current = {
      node: chosenNode ? chosenNode.id : null,
      edge: chosenEdge ? chosenEdge.id : null,
    };
    for (const event of pending.current) trackSelection(event);
    for (const ghost of ghosts.current) {
      selected.current = { node: ghostId(ghost), edge: null };
    }
  }, [args, tick]);

  const trackSelection = (event) => {
    if (event.kind === "select") selected.current = { node: event.node, edge: null };
    else if (event.kind === "select_edge") selected.current = { node: null, edge: event.edge };
    else if (event.kind === "deselect" || event.kind.startsWith("delete"))
      selected.current = { node: null, edge: null };
  };

  const emit = useCallback(
    (event) => {
      lastSeq.current = Math.max(Date.now(), lastSeq.current + 1, (args.ack || 0) + 1);
      const stamped = { ...event, seq: lastSeq.current };
      pending.current = [...pending.current, stamped];
      setPendingCount(pending.current.length + ghosts.current.length);
      trackSelection(stamped);
      drawEvent(stamped);
      setMenu(null);
      sendValue({ events: pending.current, version: args.version });
    },
    [args.version, args.ack],
  );

  // The view: fit when Python asks (a new graph, Tidy, Open), never cramped below the smallest
  // readable zoom; a graph taller than that shows its top (the Input), not its middle.
  const virtual = args.nodes.length > VIRTUALIZE;
  const ready = allMeasured || virtual; // a big graph is fitted by positions, not measurements
  useEffect(() => {
    if (!ready || !width || !height || fitted.current === args.fit) return;
    if (view.version !== args.version) return; // the new state is not drawn yet
    fitted.current = args.fit;
    const nodes = view.nodes; // what is drawn (React Flow's store may not hold it yet)
    if (!nodes.length) return;
    const box = boundsOf(nodes, args.node_width);
    const zoom = Math.max(
      args.min_zoom,
      Math.min(1, (width - 2 * MARGIN) / box.width, (height - 2 * MARGIN) / box.height),
    );
    const tooWide = box.width * zoom > width - 2 * MARGIN;
    const tooTall = box.height * zoom > height - 2 * MARGIN;
    // Too big to fit: start where the data enters, the top node in the middle at the top.
    const top = nodes.reduce((best, n) => (placeOf(n).y < placeOf(best).y ? n : best));
    const x = tooWide
      ? width / 2 - (placeOf(top).x + (top.measured?.width ?? args.node_width) / 2) * zoom
      : (width - box.width * zoom) / 2 - box.x * zoom;
    const y = tooTall ? MARGIN - box.y * zoom : (height - box.height * zoom) / 2 - box.y * zoom;
    flow.setViewport({ x, y, zoom });
    revealed.current = selected.current.node; // fitted: what is selected is where it is
  }, [ready, width, height, args, flow, view]);

  // A node Python selected (a layer just added) is brought into view once, by the least pan.
  useEffect(() => {
    const id = args.nodes.find((n) => n.selected)?.id ?? null;
    if (!ready || id === null || id === revealed.current || fitted.current !== args.fit) return;
    revealed.current = id;
    const node = flow.getInternalNode(id);
    if (!node) return;
    const { x, y, zoom } = flow.getViewport();
    const left = node.internals.positionAbsolute.x * zoom + x;
    const top = node.internals.positionAbsolute.y * zoom + y;
    const right = left + (node.measured?.width ?? args.node_width) * zoom;
    const bottom = top + (node.measured?.height ?? NODE_HEIGHT) * zoom;
    let dx = 0;
    let dy = 0;
    if (bottom > height - MARGIN) dy = height - MARGIN - bottom;
    if (top + dy < MARGIN) dy = MARGIN - top;
    if (right > width - MARGIN) dx = width - MARGIN - right;
    if (left + dx < MARGIN) dx = MARGIN - left;
    if (dx || dy) flow.setViewport({ x: x + dx, y: y + dy, zoom });
  }, [args, ready, width, height, flow]);

  // Delete/Backspace, here and on the page around the frame (where focus is after a palette
  // click), delete what is selected; typing in a field is left alone.
  useEffect(() => {
    if (readOnly) return undefined;
    const onKey = (event) => {
      if (!window.frameElement || !window.frameElement.isConnected) return; // a replaced frame
      const target = event.target;
      const tag = ((target && target.tagName) || "").toLowerCase();
      if (tag === "input" || tag === "textarea" || (target && target.isContentEditable)) return;
      if (event.ctrlKey || event.metaKey || event.altKey) return;
      if (event.key !== "Delete" && event.key !== "Backspace") return;
      const { node, edge } = selected.current;
      if (node === null && edge === null) return;
      if (node !== null && node.startsWith(GHOST)) return; // not named by the page yet
      event.preventDefault();
      event.stopPropagation();
      emit(node !== null ? { kind: "delete_nodes", nodes: [node] } : { kind: "delete_edge", edge });
    };
    const windows = [window];
    try {
      const framed = window.parent && window.parent !== window;
      if (framed && window.parent.document) windows.push(window.parent);
    } catch (error) {
      /* a page of another origin: keys inside the frame only */
    }
    for (const w of windows) w.addEventListener("keydown", onKey, true);
    return () => {
      for (const w of windows) w.removeEventListener("keydown", onKey, true);
    };
  }, [emit, readOnly]);

  // A click on the page's palette: the layer is drawn now, where the page will put it.
  const latest = useRef(args);
  latest.current = args;
  useEffect(() => {
    if (readOnly) return undefined;
    let page;
    try {
      page = window.parent.document;
    } catch (error) {
      return undefined; // a page of another origin: the page's answer draws the layer
    }
    const onClick = (event) => {
      if (!window.frameElement || !window.frameElement.isConnected) return;
      const button = event.target.closest && event.target.closest("button");
      const pills = button && button.closest('[class*="st-key-nb_palette_"]');
      if (!pills) return;
      const now = latest.current;
      const type = (button.innerText || "").trim().split(/\s+/)[0];
      if (!(now.layer_types || []).includes(type)) return;
      if (ghosts.current.some((ghost) => ghost.round === now.palette_round)) return; // taken once
      lastSeq.current = Math.max(Date.now(), lastSeq.current + 1);
      const plan = type === "Input" ? now.add_plans.input : now.add_plans.layer;
      const ghost = { kind: "add", seq: lastSeq.current, round: now.palette_round, type, plan };
      ghosts.current = [...ghosts.current, ghost];
      selected.current = { node: ghostId(ghost), edge: null };
      setPendingCount(pending.current.length + ghosts.current.length);
      drawEvent(ghost);
      // A click the page never took (it can drop a click on pills it has replaced) must not
      // leave a layer drawn for good: after a while the last state is drawn without it.
      setTimeout(() => {
        if (!ghosts.current.includes(ghost)) return;
        ghosts.current = ghosts.current.filter((other) => other !== ghost);
        setTick((count) => count + 1);
      }, GHOST_TTL_MS);
    };
    page.addEventListener("click", onClick, true);
    return () => page.removeEventListener("click", onClick, true);
  }, [readOnly]);

  const onNodesChange = useCallback((changes) => {
    // Only what React Flow measures and drags: dimensions and positions. Nothing is removed here.
    setView((current) => {
      let changed = false;
      const byId = new Map(current.nodes.map((n) => [n.id, n]));
      for (const change of changes) {
        const node = byId.get(change.id);
        if (!node) continue;
        if (change.type === "dimensions" && change.dimensions) {
          byId.set(change.id, { ...node, measured: change.dimensions });
          changed = true;
        } else if (change.type === "position" && change.position) {
          byId.set(change.id, { ...node, position: change.position, dragging: change.dragging });
          changed = true;
        }
      }
      return changed ? { ...current, nodes: current.nodes.map((n) => byId.get(n.id)) } : current;
    });
  }, []);

  const onNodeDragStop = useCallback(
    (_event, _node, dragged) => {
      // Python reads absolute places (a face in a frame: its frame's place plus its own).
      const where = whereOf(latest.current.nodes);
      const positions = {};
      const local = {};
      for (const node of dragged) {
        const origin = (node.parentId && where[node.parentId]) || { x: 0, y: 0 };
        positions[node.id] = [node.position.x + origin.x, node.position.y + origin.y];
        local[node.id] = [node.position.x, node.position.y];
      }
      emit({ kind: "move", positions, local });
    },
    [emit],
  );

  const groupIds = useMemo(
    () => new Set(args.nodes.filter((n) => FACE_TYPES[n.kind]).map((n) => n.id)),
    [args.nodes],
  );
  const onConnect = useCallback(
    ({ source, target }) => {
      if (!source || !target || source === target) return;
      if (groupIds.has(source) || groupIds.has(target)) return; // a group: open it first
      emit({ kind: "connect", source, target });
    },
    [emit, groupIds],
  );
  const toggleGroup = useCallback((id) => emit({ kind: "toggle_group", group: id }), [emit]);
  const groups = useMemo(() => ({ toggle: toggleGroup, readOnly }), [toggleGroup, readOnly]);

  const onNodeContextMenu = useCallback((event, node) => {
    event.preventDefault();
    if (isGroup(node)) return;
    setMenu({ kind: "node", id: node.id, x: event.clientX, y: event.clientY });
  }, []);
  const onEdgeContextMenu = useCallback((event, edge) => {
    event.preventDefault();
    if (edge.data?.joined) return; // drawn into a closed group: no edge of the file
    setMenu({ kind: "edge", id: edge.id, x: event.clientX, y: event.clientY });
  }, []);

  const editing = {
    onNodeDragStop,
    onConnect,
    isValidConnection: (c) =>
      c.source !== c.target && !groupIds.has(c.source) && !groupIds.has(c.target),
    onNodeClick: (_e, node) => (isGroup(node) ? null : emit({ kind: "select", node: node.id })),
    onNodeDoubleClick: (_e, node) => (isGroup(node) ? toggleGroup(node.id) : null),
    onEdgeClick: (_e, edge) => (edge.data?.joined ? null : emit({ kind: "select_edge", edge: edge.id })),
    onPaneClick: () => (menu ? setMenu(null) : emit({ kind: "deselect" })),
    onNodeContextMenu,
    onEdgeContextMenu,
    onPaneContextMenu: (event) => {
      event.preventDefault();
      setMenu(null);
    },
    onMoveStart: () => setMenu(null),
  };

  // A read-only canvas whose node clicks are reported (the step view: a click picks the layer
  // whose numbers it explains); nothing is selected or moved here, so no event queue is needed.
  const pickable = {
    ...READ_ONLY,
    onNodeClick: (_e, node) => (isGroup(node) ? null : sendValue({ pick: node.id, seq: Date.now() })),
  };

  // The wheel scrolls the page, as everywhere else on it (the canvas sits in a frame, whose
  // wheel never reaches the page by itself); Ctrl or Cmd + wheel, or a pinch, zooms the canvas.
  const onWheel = useCallback((event) => {
    if (event.ctrlKey || event.metaKey) return;
    scrollPage(event.deltaX, event.deltaY * (event.deltaMode === 1 ? 16 : 1));
  }, []);

  return (
    <div
      onWheel={onWheel}
      className={`nb-canvas${readOnly ? " nb-readonly" : ""}${args.pickable ? " nb-pickable" : ""}`}
      style={{ height: args.height, "--nb-node-width": `${args.node_width}px` }}
      data-nodes={view.nodes.length}
      data-edges={view.edges.length}
      data-pending={pendingCount}
    >
      <Groups.Provider value={groups}>
      <ReactFlow
        nodes={view.nodes}
        edges={view.edges}
        nodeTypes={NODE_TYPES}
        onNodesChange={onNodesChange}
        {...(readOnly ? (args.pickable ? pickable : READ_ONLY) : editing)}
        deleteKeyCode={null}
        selectionKeyCode={null}
        multiSelectionKeyCode={null}
        elementsSelectable={false}
        minZoom={args.min_zoom}
        maxZoom={2}
        zoomOnScroll={false}
        zoomOnDoubleClick={false}
        preventScrolling={false}
        zoomActivationKeyCode={["Control", "Meta"]}
        onlyRenderVisibleElements={virtual}
        proOptions={{ hideAttribution: true }}
      >
        <Controls showInteractive={false} position="bottom-left" />
      </ReactFlow>
      </Groups.Provider>
      {menu ? (
        <div className="nb-menu" style={{ left: menu.x, top: menu.y }} role="menu">
          <button
            type="button"
            role="menuitem"
            onClick={() =>
              emit(
                menu.kind === "node"
                  ? { kind: "delete_nodes", nodes: [menu.id] }
                  : { kind: "delete_edge", edge: menu.id },
              )
            }
          >
            {menu.kind === "node" ? args.labels.delete_node : args.labels.delete_edge}
          </button>
        </div>
      ) : null}
    </div>
  );
}

// ---------------------------------------------------------------------------------------------
// The frame: waits for Streamlit's first render message, then keeps the latest args.

// The editable canvas takes the window's height below it (at least the page's height): on a
// 1920x1080 screen it grows, at 1280x720 the toolbar and the canvas still fit.
function useRoomBelow(minimum, stretch) {
  const [height, setHeight] = useState(minimum);
  useEffect(() => {
    if (!stretch) {
      setHeight(minimum);
      return undefined;
    }
    const measure = () => {
      try {
        const page = window.parent;
        const main = page.document.querySelector('[data-testid="stMain"]');
        const top = window.frameElement.getBoundingClientRect().top + (main ? main.scrollTop : 0);
        setHeight(Math.max(minimum, Math.floor(page.innerHeight - top - 16)));
      } catch (error) {
        setHeight(minimum); // another origin's page: the page's own height
      }
    };
    measure();
    let page = null;
    try {
      page = window.parent;
      page.addEventListener("resize", measure);
    } catch (error) {
      page = null;
    }
    return () => page && page.removeEventListener("resize", measure);
  }, [minimum, stretch]);
  return height;
}

function Component() {
  const [args, setArgs] = useState(null);
  useEffect(() => {
    const onMessage = (event) => {
      if (event.data && event.data.type === "streamlit:render") setArgs(event.data.args.state);
    };
    window.addEventListener("message", onMessage);
    announceReady();
    return () => window.removeEventListener("message", onMessage);
  }, []);
  const height = useRoomBelow(args ? args.height : 0, Boolean(args && !args.read_only));
  const sized = useMemo(() => (args && { ...args, height }), [args, height]);
  const frameName = args ? args.frame_name : null;
  useEffect(() => {
    // What a screen reader says for the frame: its title is the component's module path.
    try {
      if (frameName) window.frameElement.setAttribute("aria-label", frameName);
    } catch (error) {
      // another origin's page: the frame keeps its title
    }
  }, [frameName]);
  useEffect(() => {
    if (args) setFrameHeight(height);
  }, [args && height]);
  if (!sized) return null;
  return (
    <ReactFlowProvider>
      <Canvas args={sized} />
    </ReactFlowProvider>
  );
}

createRoot(document.getElementById("root")).render(<Component />);
