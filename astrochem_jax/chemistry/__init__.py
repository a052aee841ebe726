"""Ground-truth chemistry: species formulae, reaction networks, rate laws, the stiff solver and
collapse tracks."""
