// "What uses my space?": the biggest folders and files of a folder of the
// home, measured by hubfs's walker on the server; open a folder, go back up,
// delete an entry (after a confirmation) to get back under the limit.

import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { deletePath, getListing, human, IEntry, IListing } from './api';

export class SpacePanel extends Widget {
  constructor(onChange: () => void) {
    super();
    this.id = 'jp-hubfs-space';
    this.title.label = 'What uses my space?';
    this.title.closable = true;
    this.addClass('jp-hubfs-space');
    this._onChange = onChange;
  }

  /** Lists the folder `path` of the home ('' = the home itself). */
  async open(path: string): Promise<void> {
    this._path = path;
    this.node.replaceChildren(this._line('jp-hubfs-space-status', `Measuring ~/${path}…`));
    try {
      this._render(await getListing(path));
    } catch (e) {
      this.node.replaceChildren(
        this._line('jp-hubfs-space-error', `Cannot list ~/${path}: ${(e as Error).message}`)
      );
    }
  }

  refresh(): Promise<void> {
    return this.open(this._path);
  }

  private _line(cls: string, text: string): HTMLElement {
    const p = document.createElement('p');
    p.className = cls;
    p.textContent = text;
    return p;
  }

  private _render(listing: IListing): void {
    const head = document.createElement('div');
    head.className = 'jp-hubfs-space-head';
    const crumbs = document.createElement('span');
    crumbs.className = 'jp-hubfs-space-crumbs';
    const parts = listing.path ? listing.path.split('/') : [];
    const crumb = (label: string, target: string) => {
      const a = document.createElement('button');
      a.className = 'jp-hubfs-space-crumb';
      a.textContent = label;
      a.onclick = () => void this.open(target);
      crumbs.append(a, '/');
    };
    crumb('Home', '');
    parts.forEach((p, i) => crumb(p, parts.slice(0, i + 1).join('/')));
    const total = document.createElement('span');
    total.className = 'jp-hubfs-space-total';
    total.textContent = ` ${human(listing.total_bytes)} in ${listing.entries.length} entries`;
    head.append(crumbs, total);

    const table = document.createElement('table');
    table.className = 'jp-hubfs-space-table';
    const max = Math.max(1, ...listing.entries.map(e => e.bytes));
    for (const e of listing.entries) {
      table.append(this._row(e, max));
    }
    const foot = this._line(
      'jp-hubfs-space-foot',
      `Measured by ${listing.measured_by}` +
        (listing.more ? `; ${listing.more} smaller entries not shown` : '') +
        '. Deleting frees space at once (nothing goes to a trash folder).'
    );
    this.node.replaceChildren(head, table, foot);
  }

  private _row(e: IEntry, max: number): HTMLTableRowElement {
    const tr = document.createElement('tr');
    tr.className = 'jp-hubfs-space-row';
    tr.dataset.name = e.name;
    tr.dataset.kind = e.kind;
    const name = document.createElement('td');
    if (e.kind === 'dir') {
      const b = document.createElement('button');
      b.className = 'jp-hubfs-space-open';
      b.textContent = e.name + '/';
      b.title = `Open ${e.name}`;
      b.onclick = () => void this.open(e.path);
      name.append(b);
    } else {
      name.textContent = e.name + (e.kind === 'symlink' ? ' →' : '');
    }
    const size = document.createElement('td');
    size.className = 'jp-hubfs-space-size';
    size.textContent = human(e.bytes) + (e.partial ? ' (partial)' : '');
    const bar = document.createElement('td');
    const fill = document.createElement('div');
    fill.className = 'jp-hubfs-space-bar';
    fill.style.width = `${Math.round((e.bytes * 100) / max)}%`;
    bar.append(fill);
    const count = document.createElement('td');
    count.textContent = e.kind === 'dir' ? `${e.files} files` : '';
    const del = document.createElement('td');
    const b = document.createElement('button');
    b.className = 'jp-hubfs-space-delete';
    b.textContent = 'Delete';
    b.title = `Delete ${e.path}`;
    b.onclick = () => void this._delete(e);
    del.append(b);
    tr.append(name, size, bar, count, del);
    return tr;
  }

  private async _delete(e: IEntry): Promise<void> {
    const what = e.kind === 'dir' ? `the folder ~/${e.path} and everything in it` : `~/${e.path}`;
    const answer = await showDialog({
      title: 'Delete?',
      body: `Delete ${what} (${human(e.bytes)})? This cannot be undone.`,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Delete' })]
    });
    if (!answer.button.accept) {
      return;
    }
    try {
      await deletePath(e.path);
    } catch (err) {
      await showDialog({
        title: 'Not deleted',
        body: (err as Error).message,
        buttons: [Dialog.okButton()]
      });
    }
    this._onChange();
    await this.refresh();
  }

  private _path = '';
  private _onChange: () => void;
}
