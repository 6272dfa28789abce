//! The tape: variables, parameters, and the reverse pass.
//!
//! A [`Tape`] is a list of nodes in the order they were created, which is a topological order
//! of the graph (an op's inputs always exist before its output). Each node that is the output
//! of an op holds a backward closure; [`Var::backward`] walks the nodes from the root down to
//! the first one, hands each closure the gradient of its output, and adds what it returns to
//! the gradients of the op's inputs. Closures run once and are dropped as they run, which
//! releases the tensors they kept for backward.
//!
//! A [`Var`] without a tape is a constant: ops on constants only compute their value and record
//! nothing, which is how inference runs without autodiff overhead. A variable can also be *on*
//! a tape without needing a gradient ([`Tape::input`], e.g. a batch of images): ops on it record
//! nothing either, but layers see the tape and attach their parameters to it.

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};

use convkit_tensor::Tensor;

use crate::error::{AutogradError, Result};

/// A backward rule: given the gradient of the op's output and which inputs need a gradient,
/// returns one optional gradient per input, shaped like that input.
pub type BackwardFn = Box<dyn FnOnce(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>>>;

struct Node {
    /// Node ids of the op's inputs, `None` for constant inputs.
    inputs: Vec<Option<usize>>,
    /// The backward rule; `None` for leaves and for nodes already run.
    backward: Option<BackwardFn>,
    /// For leaves made by [`Tape::param`]: where the gradient is accumulated.
    param: Option<Param>,
    /// The shape of the node's value, to check gradients against.
    dims: Vec<usize>,
}

#[derive(Default)]
struct Nodes {
    nodes: Vec<Node>,
    /// Nodes below this id belong to a graph whose backward pass has run.
    consumed_below: usize,
}

/// A recording of operations, shared by the variables computed on it (cheap to clone).
///
/// Make one per training step: create the leaves with [`Tape::var`] or [`Tape::param`], run the
/// forward pass with the ops of this crate, then call [`Var::backward`] on the loss.
///
/// ```
/// use convkit_autograd::Tape;
/// use convkit_tensor::Tensor;
/// let tape = Tape::new();
/// let x = tape.var(Tensor::from_vec(&[3], vec![1., 2., 3.])?);
/// let y = x.mul(&x)?.sum()?; // Σ x²
/// let grads = y.backward()?;
/// assert_eq!(grads.wrt(&x)?.as_slice(), &[2., 4., 6.]);
/// # Ok::<(), convkit_autograd::AutogradError>(())
/// ```
#[derive(Clone, Default)]
pub struct Tape(Rc<RefCell<Nodes>>);

impl Tape {
    /// An empty tape.
    pub fn new() -> Self {
        Self::default()
    }

    /// A leaf variable that requires a gradient (read it from the [`Gradients`] of backward).
    pub fn var(&self, value: Tensor) -> Var {
        self.leaf(value, None)
    }

    /// A leaf variable bound to a parameter: backward adds its gradient to the parameter's
    /// accumulated gradient (as PyTorch's `.grad`), besides returning it in the [`Gradients`].
    pub fn param(&self, param: &Param) -> Var {
        self.leaf(param.value(), Some(param.clone()))
    }

    fn leaf(&self, value: Tensor, param: Option<Param>) -> Var {
        let id = self.push(Node {
            inputs: Vec::new(),
            backward: None,
            param,
            dims: value.dims().to_vec(),
        });
        Var { value, tape: Some(self.clone()), id: Some(id) }
    }

    /// A variable on this tape that needs no gradient, such as a batch of inputs: ops on it
    /// record nothing, but layers that receive it attach their parameters to this tape.
    pub fn input(&self, value: Tensor) -> Var {
        Var { value, tape: Some(self.clone()), id: None }
    }

    fn push(&self, node: Node) -> usize {
        let mut inner = self.0.borrow_mut();
        inner.nodes.push(node);
        inner.nodes.len() - 1
    }

    /// Number of nodes recorded so far.
    pub fn len(&self) -> usize {
        self.0.borrow().nodes.len()
    }

    /// Whether nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn same(&self, other: &Tape) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for Tape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tape({} nodes)", self.len())
    }
}

/// A value in a computation: a tensor, the [`Tape`] it belongs to (if any), and — if it was
/// computed from variables that need gradients — its node on that tape. Cloning is cheap
/// (tensors share their data).
#[derive(Clone)]
pub struct Var {
    value: Tensor,
    tape: Option<Tape>,
    id: Option<usize>,
}

impl fmt::Debug for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.tape, self.id) {
            (_, Some(id)) => write!(f, "Var(node {id}, {:?})", self.value),
            (Some(_), None) => write!(f, "Var(input, {:?})", self.value),
            (None, None) => write!(f, "Var(constant, {:?})", self.value),
        }
    }
}

impl From<Tensor> for Var {
    fn from(t: Tensor) -> Self {
        Var::constant(t)
    }
}

impl Var {
    /// A constant: ops on it record nothing unless another operand is on a tape.
    pub fn constant(value: Tensor) -> Self {
        Self { value, tape: None, id: None }
    }

    /// The value.
    pub fn value(&self) -> &Tensor {
        &self.value
    }

    /// Takes the value out.
    pub fn into_value(self) -> Tensor {
        self.value
    }

    /// The dims of the value.
    pub fn dims(&self) -> &[usize] {
        self.value.dims()
    }

    /// Whether the variable has a node on a tape (and so receives a gradient in backward).
    pub fn requires_grad(&self) -> bool {
        self.id.is_some()
    }

    /// The tape the variable belongs to, if any (see [`Tape::input`]).
    pub fn tape(&self) -> Option<&Tape> {
        self.tape.as_ref()
    }

    /// The same value cut off from the graph (PyTorch's `detach`); it stays on its tape as an
    /// input that needs no gradient.
    pub fn detach(&self) -> Var {
        Var { value: self.value.clone(), tape: self.tape.clone(), id: None }
    }

    /// Records an op whose output is `value`, computed from `inputs`, with its backward rule.
    ///
    /// This is how every op of the crate is built, and how a user adds a new one: compute the
    /// forward value with tensor or conv kernels, then describe the gradient. If no input is
    /// on a tape, nothing is recorded and `backward` is dropped unused — build the closure
    /// lazily with [`Var::any_requires_grad`] when capturing its tensors is costly.
    pub fn from_op(inputs: &[&Var], value: Tensor, backward: BackwardFn) -> Result<Var> {
        let tape = common_tape(inputs)?;
        let tape = match tape {
            Some(tape) if Var::any_requires_grad(inputs) => tape,
            tape => return Ok(Var { value, tape, id: None }),
        };
        let node = Node {
            inputs: inputs.iter().map(|v| v.id).collect(),
            backward: Some(backward),
            param: None,
            dims: value.dims().to_vec(),
        };
        let id = tape.push(node);
        Ok(Var { value, tape: Some(tape), id: Some(id) })
    }

    /// The output of a one-input op on `self`, recorded with its rule if `self` needs a
    /// gradient.
    pub(crate) fn record_unary(&self, value: Tensor, backward: BackwardFn) -> Var {
        let (Some(tape), Some(input)) = (&self.tape, self.id) else {
            return self.with_value(value);
        };
        let node = Node {
            inputs: vec![Some(input)],
            backward: Some(backward),
            param: None,
            dims: value.dims().to_vec(),
        };
        let id = tape.push(node);
        Var { value, tape: Some(tape.clone()), id: Some(id) }
    }

    /// A new value on the same tape as `self`, needing no gradient.
    pub(crate) fn with_value(&self, value: Tensor) -> Var {
        Var { value, tape: self.tape.clone(), id: None }
    }

    /// The output of an op that needs no backward rule because no input needs a gradient:
    /// it stays on the inputs' tape (if any), so later layers can still attach to it.
    pub fn untracked(inputs: &[&Var], value: Tensor) -> Result<Var> {
        Ok(Var { value, tape: common_tape(inputs)?, id: None })
    }

    /// Whether any of `inputs` is on a tape (so an op on them must record a backward rule).
    pub fn any_requires_grad(inputs: &[&Var]) -> bool {
        inputs.iter().any(|v| v.requires_grad())
    }

    /// Computes the gradients of this scalar (one-element) variable with respect to every
    /// variable it was computed from. Consumes the recorded graph: a second call fails.
    pub fn backward(&self) -> Result<Gradients> {
        if self.value.numel() != 1 {
            return Err(AutogradError::NonScalarBackward { dims: self.dims().to_vec() });
        }
        let seed = Tensor::from_vec(self.dims(), vec![1.0])?;
        self.backward_with(seed)
    }

    /// Like [`Var::backward`], for any shape: `seed` is the gradient of the final objective
    /// with respect to this variable (same shape).
    pub fn backward_with(&self, seed: Tensor) -> Result<Gradients> {
        if seed.dims() != self.dims() {
            return Err(AutogradError::GradShape {
                op: "backward seed".into(),
                expected: self.dims().to_vec(),
                got: seed.dims().to_vec(),
            });
        }
        let (Some(tape), Some(root)) = (&self.tape, &self.id) else {
            return Err(AutogradError::NotOnTape { op: "backward" });
        };
        let mut inner = tape.0.borrow_mut();
        if *root < inner.consumed_below {
            return Err(AutogradError::GraphConsumed);
        }
        let mut grads: Vec<Option<Tensor>> = vec![None; root + 1];
        grads[*root] = Some(seed);
        let mut leaves = Vec::new();
        for id in (0..=*root).rev() {
            let Some(grad) = grads[id].take() else { continue };
            let node = &mut inner.nodes[id];
            let Some(backward) = node.backward.take() else {
                // A leaf: report its gradient, and accumulate it into its parameter.
                if let Some(p) = &node.param {
                    p.accumulate_grad(&grad)?;
                }
                leaves.push((id, grad));
                continue;
            };
            let needs: Vec<bool> = node.inputs.iter().map(Option::is_some).collect();
            let input_ids = node.inputs.clone();
            let input_grads = backward(&grad, &needs)?;
            drop(grad);
            for (input, g) in input_ids.iter().zip(input_grads) {
                let (Some(input), Some(g)) = (input, g) else { continue };
                let expected = &inner.nodes[*input].dims;
                if g.dims() != expected.as_slice() {
                    return Err(AutogradError::GradShape {
                        op: format!("backward of node {id}"),
                        expected: expected.clone(),
                        got: g.dims().to_vec(),
                    });
                }
                grads[*input] = Some(match grads[*input].take() {
                    None => g,
                    Some(mut acc) => {
                        acc.add_assign(&g)?;
                        acc
                    }
                });
            }
        }
        inner.consumed_below = inner.consumed_below.max(root + 1);
        // Release every node of the consumed graph (closures and the tensors they captured).
        for node in &mut inner.nodes[..=*root] {
            node.backward = None;
        }
        drop(inner);
        Ok(Gradients { tape: tape.clone(), leaves })
    }
}

/// The tape shared by the tracked inputs, or `None` if all are constants.
fn common_tape(inputs: &[&Var]) -> Result<Option<Tape>> {
    let mut found: Option<&Tape> = None;
    for v in inputs {
        if let Some(t) = &v.tape {
            match found {
                None => found = Some(t),
                Some(f) if f.same(t) => {}
                Some(_) => return Err(AutogradError::MixedTapes),
            }
        }
    }
    Ok(found.cloned())
}

/// The gradients of a backward pass, for the leaf variables of the graph.
#[derive(Debug)]
pub struct Gradients {
    tape: Tape,
    leaves: Vec<(usize, Tensor)>,
}

impl Gradients {
    /// The gradient of the objective with respect to the leaf `var`, or `None` when `var` is a
    /// leaf of this tape the objective does not depend on.
    ///
    /// Errors when `var` is a constant, on another tape, or not a leaf.
    pub fn get(&self, var: &Var) -> Result<Option<&Tensor>> {
        let (Some(tape), Some(id)) = (&var.tape, &var.id) else {
            return Err(AutogradError::NotOnTape { op: "gradient of a variable without a node" });
        };
        if !tape.same(&self.tape) {
            return Err(AutogradError::MixedTapes);
        }
        Ok(self.leaves.iter().find(|(i, _)| i == id).map(|(_, g)| g))
    }

    /// The gradient with respect to `var`; an error when the objective does not depend on it.
    pub fn wrt(&self, var: &Var) -> Result<&Tensor> {
        self.get(var)?.ok_or(AutogradError::NoGradient { dims: var.dims().to_vec() })
    }
}

/// A trainable tensor that outlives tapes: its value, and the gradient accumulated by every
/// backward pass since the last [`Param::zero_grad`] (as PyTorch's `.grad`).
///
/// `Param` is a shared handle (`Arc`): clones refer to the same parameter, so a layer and an
/// optimizer can both hold it.
#[derive(Clone)]
pub struct Param(Arc<Mutex<ParamState>>);

struct ParamState {
    value: Tensor,
    grad: Option<Tensor>,
}

impl fmt::Debug for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        write!(f, "Param({:?}, grad: {})", s.value, if s.grad.is_some() { "some" } else { "none" })
    }
}

impl Param {
    /// A parameter with this initial value and no gradient.
    pub fn new(value: Tensor) -> Self {
        Self(Arc::new(Mutex::new(ParamState { value, grad: None })))
    }

    fn lock(&self) -> MutexGuard<'_, ParamState> {
        // A panic while holding the lock cannot leave the state half-written (every write is a
        // single assignment), so a poisoned lock is safe to reuse.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current value (a cheap, shared clone).
    pub fn value(&self) -> Tensor {
        self.lock().value.clone()
    }

    /// Replaces the value; errors if the shape changes.
    pub fn set_value(&self, value: Tensor) -> Result<()> {
        let mut s = self.lock();
        if value.dims() != s.value.dims() {
            return Err(AutogradError::GradShape {
                op: "Param::set_value".into(),
                expected: s.value.dims().to_vec(),
                got: value.dims().to_vec(),
            });
        }
        s.value = value;
        Ok(())
    }

    /// The dims of the value.
    pub fn dims(&self) -> Vec<usize> {
        self.lock().value.dims().to_vec()
    }

    /// The accumulated gradient, if any backward pass reached this parameter.
    pub fn grad(&self) -> Option<Tensor> {
        self.lock().grad.clone()
    }

    /// Replaces the accumulated gradient (e.g. after clipping); errors on a shape mismatch.
    pub fn set_grad(&self, grad: Option<Tensor>) -> Result<()> {
        let mut s = self.lock();
        if let Some(g) = &grad
            && g.dims() != s.value.dims()
        {
            return Err(AutogradError::GradShape {
                op: "Param::set_grad".into(),
                expected: s.value.dims().to_vec(),
                got: g.dims().to_vec(),
            });
        }
        s.grad = grad;
        Ok(())
    }

    /// Forgets the accumulated gradient.
    pub fn zero_grad(&self) {
        self.lock().grad = None;
    }

    /// Applies `f` to the value and the gradient together (an optimizer step).
    pub fn update<R>(&self, f: impl FnOnce(&mut Tensor, Option<&Tensor>) -> R) -> R {
        let mut s = self.lock();
        let ParamState { value, grad } = &mut *s;
        f(value, grad.as_ref())
    }

    /// Whether two handles refer to the same parameter.
    pub fn same(&self, other: &Param) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    fn accumulate_grad(&self, g: &Tensor) -> Result<()> {
        let mut s = self.lock();
        match &mut s.grad {
            Some(acc) => acc.add_assign(g)?,
            None => s.grad = Some(g.clone()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn t(dims: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_vec(dims, v.to_vec()).unwrap()
    }

    #[test]
    fn gradients_accumulate_over_uses() {
        let tape = Tape::new();
        let x = tape.var(t(&[2], &[3., -1.]));
        // y = x·x + x  →  dy/dx = 2x + 1
        let y = x.mul(&x).unwrap().add(&x).unwrap().sum().unwrap();
        let g = y.backward().unwrap();
        assert_eq!(g.wrt(&x).unwrap().as_slice(), &[7., -1.]);
    }

    #[test]
    fn constants_record_nothing() {
        let tape = Tape::new();
        let c = Var::constant(t(&[2], &[1., 2.]));
        let d = c.mul(&c).unwrap();
        assert!(!d.requires_grad());
        assert!(tape.is_empty());
        let e = d.backward().unwrap_err();
        assert!(matches!(e, AutogradError::NonScalarBackward { .. }), "{e}");
        let s = d.sum().unwrap();
        assert!(matches!(s.backward().unwrap_err(), AutogradError::NotOnTape { .. }));
    }

    #[test]
    fn errors_for_misuse() {
        let tape = Tape::new();
        let x = tape.var(t(&[2], &[1., 2.]));
        let unused = tape.var(t(&[1], &[0.]));
        let y = x.sum().unwrap();
        let g = y.backward().unwrap();
        assert!(g.get(&unused).unwrap().is_none());
        let e = g.wrt(&unused).unwrap_err().to_string();
        assert!(e.contains("[1]"), "{e}");
        assert!(matches!(y.backward().unwrap_err(), AutogradError::GraphConsumed));
        let other = Tape::new().var(t(&[2], &[0., 0.]));
        assert!(matches!(x.add(&other).unwrap_err(), AutogradError::MixedTapes));
        let e = x.backward_with(t(&[3], &[1., 1., 1.])).unwrap_err().to_string();
        assert!(e.contains("[2]") && e.contains("[3]"), "{e}");
    }

    #[test]
    fn inputs_on_a_tape_need_no_gradient() {
        let tape = Tape::new();
        let x = tape.input(t(&[2], &[1., 2.]));
        let y = x.mul(&x).unwrap();
        assert!(!y.requires_grad());
        assert!(y.tape().is_some(), "the output stays on the tape");
        assert!(tape.is_empty(), "nothing recorded");
        let w = tape.var(t(&[2], &[3., 4.]));
        let g = y.mul(&w).unwrap().sum().unwrap().backward().unwrap();
        assert_eq!(g.wrt(&w).unwrap().as_slice(), &[1., 4.]);
        assert!(g.get(&x).is_err(), "an input has no node");
    }

    #[test]
    fn params_accumulate_until_zeroed() {
        let p = Param::new(t(&[2], &[1., 2.]));
        for _ in 0..2 {
            let tape = Tape::new();
            let w = tape.param(&p);
            w.mul_scalar(3.0).sum().unwrap().backward().unwrap();
        }
        assert_eq!(p.grad().unwrap().as_slice(), &[6., 6.]);
        p.zero_grad();
        assert!(p.grad().is_none());
        assert!(p.set_value(t(&[3], &[0.; 3])).is_err());
    }
}
