"""`cfh sweep`, `cfh status`, `cfh cancel`: a grid reconciled with what exists, and watched."""
