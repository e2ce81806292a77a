// The server extension's API (hubfs_jupyterlab/handlers.py): the home's
// figures and level, the biggest entries of a folder, and deleting one.

import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** `GET hubfs/quota` (hubfs_jupyterlab/quota.py `summary`). */
export interface IQuota {
  level: string;
  colour: 'ok' | 'warning' | 'critical' | 'unknown';
  label: string;
  used_bytes: number | null;
  quota_bytes: number | null;
  figures: 'home' | 'controller' | null;
  state: string | null;
  enforcement: string | null;
  state_since: string | null;
  message: string | null;
  notice: { type: 'info' | 'success' | 'warning' | 'error'; message: string };
  notes: string[];
  user: string;
  poll_seconds: number;
}

/** One entry of `GET hubfs/space`. */
export interface IEntry {
  name: string;
  path: string;
  kind: 'dir' | 'file' | 'symlink' | 'other';
  bytes: number;
  files: number;
  dirs: number;
  partial: boolean;
}

export interface IListing {
  path: string;
  total_bytes: number;
  entries: IEntry[];
  more: number;
  measured_by: string;
}

async function request<T>(endpoint: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'hubfs', endpoint);
  const response = await ServerConnection.makeRequest(url, init, settings);
  const text = await response.text();
  if (!response.ok) {
    let message = text;
    try {
      message = JSON.parse(text).message || text;
    } catch {
      // not JSON: the text is the message
    }
    throw new Error(message || response.statusText);
  }
  return JSON.parse(text) as T;
}

export function getQuota(): Promise<IQuota> {
  return request<IQuota>('quota');
}

export function getListing(path: string): Promise<IListing> {
  return request<IListing>('space?' + new URLSearchParams({ path }).toString());
}

export function deletePath(path: string): Promise<unknown> {
  return request('delete', { method: 'POST', body: JSON.stringify({ path }) });
}

/** `3.2 GiB` (the server's labels use the same units). */
export function human(n: number): string {
  const units: [number, string][] = [
    [2 ** 40, 'TiB'],
    [2 ** 30, 'GiB'],
    [2 ** 20, 'MiB'],
    [2 ** 10, 'KiB']
  ];
  for (const [size, name] of units) {
    if (n >= size) {
      return `${(n / size).toFixed(1).replace(/\.0$/, '')} ${name}`;
    }
  }
  return `${n} B`;
}
