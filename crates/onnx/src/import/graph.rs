//! The walk over the graph: [`Builder`] follows the chain from the input to the output and
//! turns each value that forks into two branches joined by an `Add` into a residual block.

use std::collections::{HashMap, HashSet};

use convkit_nn::{Module, Residual, Sequential};

use super::nodes::{is_constant, node_name, scope_name, single_output, unsupported_attr};
use super::{Dims, Named, into_sequential};
use crate::error::{OnnxError, Result};
use crate::proto::{DimensionValue, GraphProto, NodeProto, TensorProto, attribute_type};

/// Deepest nesting of residual blocks import follows.
const MAX_RESIDUAL_DEPTH: usize = 64;

/// Most node visits the search for residual joins may make (a bound on hostile graphs).
const MAX_JOIN_WORK: usize = 10_000_000;

/// One import: the graph, its constants, who reads each value, and the nodes used so far.
pub(super) struct Builder<'g> {
    graph: &'g GraphProto,
    /// Initializers and `Constant` outputs by name.
    pub(super) constants: HashMap<&'g str, &'g TensorProto>,
    /// For each value, the nodes that read it (once per node).
    pub(super) consumers: HashMap<&'g str, Vec<usize>>,
    /// For each node, whether a layer built so far uses it.
    pub(super) used: Vec<bool>,
    input: &'g str,
    input_dims: Dims,
    /// The graph's output value.
    pub(super) output: &'g str,
    join_work: usize,
}

impl<'g> Builder<'g> {
    pub(super) fn new(graph: &'g GraphProto) -> Result<Self> {
        let mut constants: HashMap<&str, &TensorProto> =
            graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        for n in &graph.node {
            if is_constant(n) {
                let value = match n.attribute.as_slice() {
                    [a] if a.name == "value" && a.r#type == attribute_type::TENSOR => a.t.as_ref(),
                    _ => None,
                };
                let (Some(t), [out]) = (value, n.output.as_slice()) else {
                    return Err(unsupported_attr(
                        n,
                        "only a `value` tensor attribute with one output is supported",
                    ));
                };
                constants.insert(out.as_str(), t);
            }
        }
        let data_inputs: Vec<_> =
            graph.input.iter().filter(|v| !constants.contains_key(v.name.as_str())).collect();
        let [input] = data_inputs.as_slice() else {
            return Err(OnnxError::Graph(format!(
                "the graph needs exactly one data input, it has {}",
                data_inputs.len()
            )));
        };
        let [output] = graph.output.as_slice() else {
            return Err(OnnxError::Graph(format!(
                "the graph needs exactly one output, it has {}",
                graph.output.len()
            )));
        };
        let input_dims = input
            .r#type
            .as_ref()
            .and_then(|t| t.tensor_type.as_ref())
            .and_then(|t| t.shape.as_ref())
            .and_then(|s| {
                s.dim
                    .iter()
                    .skip(1)
                    .map(|d| match d.value {
                        Some(DimensionValue::DimValue(v)) => usize::try_from(v).ok(),
                        _ => None,
                    })
                    .collect::<Option<Vec<usize>>>()
            });
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in graph.node.iter().enumerate() {
            let mut seen = HashSet::new();
            for v in &n.input {
                if !v.is_empty() && !constants.contains_key(v.as_str()) && seen.insert(v.as_str()) {
                    consumers.entry(v.as_str()).or_default().push(i);
                }
            }
        }
        Ok(Self {
            graph,
            constants,
            consumers,
            used: vec![false; graph.node.len()],
            input: input.name.as_str(),
            input_dims,
            output: output.name.as_str(),
            join_work: 0,
        })
    }

    pub(super) fn build(&mut self) -> Result<Vec<Named>> {
        let (layers, end, _) = self.chain(self.input, None, None, self.input_dims.clone(), 0)?;
        if end != self.output {
            return Err(OnnxError::Graph(format!(
                "the chain from `{}` ends at `{end}`, not at the output `{}`",
                self.input, self.output
            )));
        }
        let unused: Vec<&str> = self
            .graph
            .node
            .iter()
            .zip(&self.used)
            .filter(|(n, used)| !(**used || is_constant(n)))
            .map(|(n, _)| node_name(n))
            .collect();
        if !unused.is_empty() {
            return Err(OnnxError::Graph(format!(
                "nodes off the path from input to output: {}",
                unused.join(", ")
            )));
        }
        Ok(layers)
    }

    pub(super) fn node(&self, i: usize) -> &'g NodeProto {
        &self.graph.node[i]
    }

    pub(super) fn consumers_of(&self, v: &str) -> Vec<usize> {
        self.consumers.get(v).cloned().unwrap_or_default()
    }

    /// Follows the graph from value `from` until value `until` (or a value nobody reads),
    /// taking `first` as the first node when given. Returns the layers, the last value and
    /// its dims.
    fn chain(
        &mut self,
        from: &'g str,
        until: Option<&'g str>,
        first: Option<usize>,
        mut dims: Dims,
        depth: usize,
    ) -> Result<(Vec<Named>, &'g str, Dims)> {
        if depth > MAX_RESIDUAL_DEPTH {
            return Err(OnnxError::Graph(format!(
                "residual blocks nest deeper than {MAX_RESIDUAL_DEPTH}"
            )));
        }
        let mut layers: Vec<Named> = Vec::new();
        let mut cur = from;
        let mut next = first;
        // Each step uses at least one node, so this bounds the walk.
        for _ in 0..=self.graph.node.len() {
            if Some(cur) == until {
                return Ok((layers, cur, dims));
            }
            let i = match next.take() {
                Some(i) => i,
                None => match self.consumers_of(cur).as_slice() {
                    [] => return Ok((layers, cur, dims)),
                    &[i] => i,
                    &[a, b] => {
                        let (name, block, out, out_dims) =
                            self.residual(cur, a, b, &dims, depth)?;
                        layers.push((name, block));
                        cur = out;
                        dims = out_dims;
                        continue;
                    }
                    many => {
                        return Err(OnnxError::Graph(format!(
                            "value `{cur}` is read by {} nodes; only two-way forks joined by \
                             an Add are supported",
                            many.len()
                        )));
                    }
                },
            };
            if self.used[i] {
                return Err(OnnxError::Graph(format!(
                    "node `{}` is reached twice",
                    node_name(self.node(i))
                )));
            }
            self.used[i] = true;
            let n = self.node(i);
            if n.op_type == "Add"
                && n.domain.is_empty()
                && n.input.len() == 2
                && n.input[0] == n.input[1]
            {
                // x + x: a residual block whose body is the identity.
                layers.push((scope_name(n), Box::new(Residual::new(Sequential::new()))));
                cur = single_output(n)?;
                continue;
            }
            if n.input.first().map(String::as_str) != Some(cur) {
                return Err(OnnxError::Graph(format!(
                    "node `{}` reads `{cur}` other than as its first input",
                    node_name(n)
                )));
            }
            let (layer, out, out_dims) = self.layer(i, &dims)?;
            if let Some(layer) = layer {
                layers.push(layer);
            }
            cur = out;
            dims = out_dims;
        }
        Err(OnnxError::Graph("the walk over the graph does not end".into()))
    }

    /// The residual block that starts where `cur` forks into nodes `a` and `b`.
    fn residual(
        &mut self,
        cur: &'g str,
        a: usize,
        b: usize,
        dims: &Dims,
        depth: usize,
    ) -> Result<(String, Box<dyn Module>, &'g str, Dims)> {
        let reach_a = self.reach(a)?;
        let reach_b = self.reach(b)?;
        // The join: the first Add both branches reach (nodes are in topological order).
        let join = (a.max(b)..self.graph.node.len()).find(|&j| {
            let n = self.node(j);
            n.op_type == "Add"
                && n.domain.is_empty()
                && reach_a.contains(&j)
                && reach_b.contains(&j)
        });
        let Some(j) = join else {
            return Err(OnnxError::Graph(format!(
                "value `{cur}` forks into `{}` and `{}`, which no Add joins",
                node_name(self.node(a)),
                node_name(self.node(b))
            )));
        };
        let add = self.node(j);
        let [lhs, rhs] = add.input.as_slice() else {
            return Err(unsupported_attr(add, "Add needs exactly two inputs"));
        };
        let mut branches = Vec::new();
        for operand in [lhs.as_str(), rhs.as_str()] {
            if operand == cur {
                branches.push((Vec::new(), dims.clone()));
                continue;
            }
            // The branch through the fork's consumer that leads to this operand.
            let start = [a, b].into_iter().find(|&c| c != j && self.produces_towards(c, operand));
            let Some(start) = start else {
                return Err(OnnxError::Graph(format!(
                    "Add `{}`: operand `{operand}` does not come from `{cur}`",
                    node_name(add)
                )));
            };
            let (layers, end, d) =
                self.chain(cur, Some(operand), Some(start), dims.clone(), depth + 1)?;
            if end != operand {
                return Err(OnnxError::Graph(format!(
                    "Add `{}`: the branch from `{cur}` ends at `{end}`, not at `{operand}`",
                    node_name(add)
                )));
            }
            branches.push((layers, d));
        }
        if self.used[j] {
            return Err(OnnxError::Graph(format!("node `{}` is reached twice", node_name(add))));
        }
        self.used[j] = true;
        let out = single_output(add)?;
        let name = scope_name(add);
        let (shortcut, s_dims) = branches.pop().unwrap_or_default();
        let (body, b_dims) = branches.pop().unwrap_or_default();
        if let (Some(x), Some(y)) = (&b_dims, &s_dims)
            && x != y
        {
            return Err(OnnxError::Graph(format!(
                "Add `{}` joins shapes {x:?} and {y:?}; only equal shapes are supported",
                node_name(add)
            )));
        }
        let out_dims = b_dims.or(s_dims);
        // Children named inside the block (`layer1.conv1`, or `layer1.body.conv1` as convkit
        // exports them) lose the block's prefix.
        let strip = |layers: Vec<Named>, branch: &str| -> Sequential {
            let prefixes = [format!("{name}.{branch}."), format!("{name}.")];
            into_sequential(
                layers
                    .into_iter()
                    .map(|(n, m)| {
                        let short = prefixes
                            .iter()
                            .find_map(|p| n.strip_prefix(p.as_str()))
                            .filter(|rest| !name.is_empty() && !rest.is_empty());
                        (short.map_or(n.clone(), str::to_owned), m)
                    })
                    .collect(),
            )
        };
        let block: Box<dyn Module> = match (body.is_empty(), shortcut.is_empty()) {
            (_, true) => Box::new(Residual::new(strip(body, "body"))),
            (true, false) => Box::new(Residual::new(strip(shortcut, "shortcut"))),
            (false, false) => {
                Box::new(Residual::with_shortcut(strip(body, "body"), strip(shortcut, "shortcut")))
            }
        };
        Ok((name, block, out, out_dims))
    }

    /// The nodes reachable from node `start` (itself included), by data edges.
    fn reach(&mut self, start: usize) -> Result<HashSet<usize>> {
        let mut seen = HashSet::from([start]);
        let mut stack = vec![start];
        while let Some(i) = stack.pop() {
            self.join_work += 1;
            if self.join_work > MAX_JOIN_WORK {
                return Err(OnnxError::Graph("the graph has too many forks to analyse".into()));
            }
            for out in &self.node(i).output {
                for &c in self.consumers.get(out.as_str()).map(Vec::as_slice).unwrap_or_default() {
                    if seen.insert(c) {
                        stack.push(c);
                    }
                }
            }
        }
        Ok(seen)
    }

    /// Whether node `c` produces `value` or something `value` is computed from.
    fn produces_towards(&mut self, c: usize, value: &str) -> bool {
        if self.node(c).output.iter().any(|o| o == value) {
            return true;
        }
        match self.reach(c) {
            Ok(r) => r.iter().any(|&i| self.node(i).output.iter().any(|o| o == value)),
            Err(_) => false,
        }
    }
}
