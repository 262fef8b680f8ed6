"""The paper's ablation Tables 1-5 as lists of config overrides, one per row.

Each variant is (name, {dotted config field: value}); applied on top of any dataset config.
"""
ALIGNS = ('align1', 'align2', 'align3', 'align4', 'align5')


def _aligns(*on: int) -> dict:
  """Only the aligns `on`: SPFM (V_R) and PDM (T_R), which serve Align II and III alone, exist
  only with them, and so do their ID terms."""
  return {**{f'loss.align{i}': i in on for i in range(1, 6)},
          'model.spfm': 2 in on, 'model.pdm': 3 in on}


SWEEPS = {
    # Table 1: the five alignments, alone and combined, against the common-space baseline.
    'table1': [
        ('baseline', {'model.baseline': True}),
        ('I', _aligns(1)), ('II', _aligns(2)), ('III', _aligns(3)), ('IV', _aligns(4)),
        ('V', _aligns(5)), ('I+II', _aligns(1, 2)), ('I+III', _aligns(1, 3)),
        ('II+III', _aligns(2, 3)), ('I+II+III', _aligns(1, 2, 3)), ('I+IV+V', _aligns(1, 4, 5)),
        ('I+II+III+IV+V', _aligns(1, 2, 3, 4, 5)),
    ],
    # Table 2: MEC, SPSM + SPFM, SAM, SDM.
    'table2': [
        ('no MEC, no SPSM+SPFM', {'loss.mec': False, 'model.spsm_spfm': False}),
        ('no MEC', {'loss.mec': False}),
        ('DSSL', {}),
        ('no SAM', {'model.sam': False}),
        ('no SDM', {'model.sdm': False}),
    ],
    # Table 3: how SPFM combines T_P and V_S.
    'table3': [('addition', {'model.spfm_fusion': 'add'}),
               ('concatenation', {'model.spfm_fusion': 'concat'})],
    # Table 4: SDM's zeroing rate r.
    'table4': [(f'r={r}', {'model.sdm_zero_ratio': r}) for r in (0.0, 0.25, 0.5, 0.75, 0.9)],
    # Table 5: SDM's reconstruction loss.
    'table5': [('Euclidean distance', {'loss.sdm': 'euclidean'}), ('ranking loss', {'loss.sdm': 'rank'})],
}


def slug(name: str) -> str:
  """A folder name for a variant: 'no MEC, no SPSM+SPFM' -> 'no_MEC_no_SPSM+SPFM'."""
  return ''.join(c if c.isalnum() or c in '+=.-' else '_' for c in name).strip('_').replace(
      '__', '_')
