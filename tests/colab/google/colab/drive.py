"Stand-in for `google.colab.drive`: `mount` links the mount point to `$COLAB_REHEARSAL_DRIVE` (its `MyDrive/` inside)."
import os
from pathlib import Path

calls = []

def mount(mountpoint:str, force_remount:bool=False, timeout_ms:int=120000, readonly:bool=False):
    "Make `mountpoint/MyDrive` the rehearsal's stand-in Drive, like Colab's authorised mount."
    target = os.environ.get('COLAB_REHEARSAL_DRIVE')
    if not target: raise ValueError("stand-in google.colab.drive: set COLAB_REHEARSAL_DRIVE to the folder that plays Google Drive")
    calls.append(str(mountpoint))
    mp, target = Path(mountpoint), Path(target)
    (target/'MyDrive').mkdir(parents=True, exist_ok=True)
    if mp.is_symlink() and Path(os.readlink(mp)) == target: return
    if mp.is_symlink(): mp.unlink()
    elif mp.exists():
        if any(mp.iterdir()): raise ValueError(f"Mountpoint must not already contain files: {mp}") # what Colab says
        mp.rmdir()
    mp.parent.mkdir(parents=True, exist_ok=True)
    mp.symlink_to(target, target_is_directory=True)
    print(f'Mounted at {mountpoint}')
