// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";

/// @title PaymentSessions — escrowed pay-per-token sessions between a client and one host
/// @notice A client locks a deposit (native ETH or an ERC-20) for a host, a price per token and an expiry.
///         While tokens stream off-chain, the client signs EIP-712 receipts for the CUMULATIVE amount it
///         owes. The host settles the latest receipt whenever it likes (each settlement pays only the
///         increment over what was settled before) and closes the session with a final one, refunding the
///         rest to the client. If the host never closes, the client reclaims the unsettled rest after the
///         expiry. The host can never take more than the client signed for, nor more than the deposit, nor
///         anything after the expiry; the client can never take back what a receipt already paid.
/// @dev Receipt = EIP-712 {name "FabstirPaymentSessions", version "1", chainId, verifyingContract}
///      Receipt(bytes32 sessionId,uint256 amount). Session ids are unique per (chain, contract, client,
///      nonce), so a receipt cannot be replayed in another session, chain or deployment; cumulative
///      amounts make replaying one within its session pointless (it must exceed what was settled).
///      The treasury fee rounds down on the cumulative amount: fees over a session are
///      feeFor(settled) however the settlements were split. Every state-changing function is nonReentrant
///      and applies its effects before any transfer.
contract PaymentSessions is EIP712, ReentrancyGuard {
    using SafeERC20 for IERC20;

    /// @notice A session as `getSession` returns it. `token` is address(0) for native ETH;
    ///         the deposit still locked is `deposit - settled - refunded` (0 once closed).
    struct Session {
        address client;
        address host;
        address token;
        uint256 deposit;
        uint256 pricePerToken;
        uint64 expiry;
        uint256 settled;
        uint256 refunded;
        bool closed;
    }

    /// @dev The storage layout of a session: `Session` packed into 7 slots instead of 9 (client with
    ///      expiry, host with closed), which saves two cold stores when a session opens.
    struct Stored {
        address client;
        uint64 expiry;
        address host;
        bool closed;
        address token;
        uint256 deposit;
        uint256 pricePerToken;
        uint256 settled;
        uint256 refunded;
    }

    bytes32 private constant RECEIPT_TYPEHASH = keccak256("Receipt(bytes32 sessionId,uint256 amount)");
    uint256 private constant BPS = 10_000;

    /// @notice Where the fee of every settlement goes.
    address public immutable treasury;
    /// @notice The fee, in basis points of each settled amount (rounded down on the cumulative amount).
    uint16 public immutable feeBasisPoints;
    /// @notice How many sessions each client has opened: the nonce in the next session id.
    mapping(address client => uint256) public nonces;

    mapping(bytes32 sessionId => Stored) private _sessions;

    event SessionOpened(
        bytes32 indexed sessionId,
        address indexed client,
        address indexed host,
        address token,
        uint256 deposit,
        uint256 pricePerToken,
        uint64 expiry
    );
    event Settled(bytes32 indexed sessionId, uint256 amount, uint256 hostAmount, uint256 fee, uint256 settled);
    event SessionClosed(bytes32 indexed sessionId, uint256 settled, uint256 refunded);
    event Reclaimed(bytes32 indexed sessionId, uint256 refunded);

    error FeeTooHigh();
    error ZeroTreasury();
    error ZeroDeposit();
    error ZeroPrice();
    error AlreadyExpired();
    error SelfHost();
    error WrongValue();
    error ZeroHost();
    error UnknownSession();
    error SessionClosedAlready();
    error NotHost();
    error NotClient();
    error Expired(uint64 expiry);
    error NotExpired(uint64 expiry);
    error InvalidSignature();
    error AmountAboveDeposit(uint256 deposit);
    error AmountNotIncreasing(uint256 settled);
    error AmountBelowSettled(uint256 settled);
    error MissingReceipt();
    error TransferFailed();

    constructor(address treasury_, uint16 feeBasisPoints_) EIP712("FabstirPaymentSessions", "1") {
        if (feeBasisPoints_ > BPS) revert FeeTooHigh();
        // An ERC-20 refuses transfers to address(0): fees would block every settlement in that token.
        if (treasury_ == address(0)) revert ZeroTreasury();
        treasury = treasury_;
        feeBasisPoints = feeBasisPoints_;
    }

    // ------------------------------------------------------------------------------------------ sessions

    /// @notice Locks `deposit` of `token` (address(0): native ETH, sent as msg.value) for `host` at
    ///         `pricePerToken` until `expiry` (epoch seconds). An ERC-20 deposit is pulled from the caller,
    ///         who must have approved this contract for it.
    /// @return sessionId keccak256(abi.encode(block.chainid, address(this), msg.sender, nonce)).
    function openSession(address host, address token, uint256 deposit, uint256 pricePerToken, uint64 expiry)
        external
        payable
        nonReentrant
        returns (bytes32 sessionId)
    {
        if (host == address(0)) revert ZeroHost();
        if (deposit == 0) revert ZeroDeposit();
        if (pricePerToken == 0) revert ZeroPrice();
        if (expiry <= block.timestamp) revert AlreadyExpired();
        if (host == msg.sender) revert SelfHost();
        if (msg.value != (token == address(0) ? deposit : 0)) revert WrongValue();

        sessionId = keccak256(abi.encode(block.chainid, address(this), msg.sender, nonces[msg.sender]++));
        Stored storage s = _sessions[sessionId];
        s.client = msg.sender;
        s.expiry = expiry;
        s.host = host;
        s.token = token;
        s.deposit = deposit;
        s.pricePerToken = pricePerToken;
        emit SessionOpened(sessionId, msg.sender, host, token, deposit, pricePerToken, expiry);

        if (token != address(0)) {
            IERC20(token).safeTransferFrom(msg.sender, address(this), deposit);
        }
    }

    /// @notice The host cashes a receipt for the cumulative `amount`: it is paid `amount - settled`, less
    ///         the fee increment, which goes to the treasury. Only before the expiry.
    function settle(bytes32 sessionId, uint256 amount, bytes calldata signature) external nonReentrant {
        Stored storage s = _settleable(sessionId);
        _checkReceipt(sessionId, s, amount, signature);
        if (amount <= s.settled) revert AmountNotIncreasing(s.settled);
        (uint256 hostAmount, uint256 fee) = _book(sessionId, s, amount);
        _transfer(s.token, s.host, hostAmount);
        _transfer(s.token, treasury, fee);
    }

    /// @notice The host ends the session: settles a final receipt if `signature` is not empty (one for
    ///         exactly what was settled pays nothing; with no receipt `amount` must be 0), then refunds
    ///         the rest of the deposit to the client. Only before the expiry (after it, the client
    ///         reclaims).
    function close(bytes32 sessionId, uint256 amount, bytes calldata signature) external nonReentrant {
        Stored storage s = _settleable(sessionId);
        uint256 hostAmount;
        uint256 fee;
        if (signature.length != 0) {
            _checkReceipt(sessionId, s, amount, signature);
            if (amount < s.settled) revert AmountBelowSettled(s.settled);
            if (amount > s.settled) (hostAmount, fee) = _book(sessionId, s, amount);
        } else if (amount != 0) {
            revert MissingReceipt();
        }
        uint256 refund = _finish(s);
        emit SessionClosed(sessionId, s.settled, refund);
        _transfer(s.token, s.host, hostAmount);
        _transfer(s.token, treasury, fee);
        _transfer(s.token, s.client, refund);
    }

    /// @notice After the expiry, the client takes back what was never settled; the session closes.
    function reclaim(bytes32 sessionId) external nonReentrant {
        Stored storage s = _existing(sessionId);
        if (s.closed) revert SessionClosedAlready();
        if (msg.sender != s.client) revert NotClient();
        if (block.timestamp < s.expiry) revert NotExpired(s.expiry);
        uint256 refund = _finish(s);
        emit Reclaimed(sessionId, refund);
        _transfer(s.token, s.client, refund);
    }

    // ------------------------------------------------------------------------------------------ views

    /// @notice The session `sessionId`; all zero (client == address(0)) if there is none.
    function getSession(bytes32 sessionId) external view returns (Session memory session) {
        Stored storage s = _sessions[sessionId];
        session.client = s.client;
        session.host = s.host;
        session.token = s.token;
        session.deposit = s.deposit;
        session.pricePerToken = s.pricePerToken;
        session.expiry = s.expiry;
        session.settled = s.settled;
        session.refunded = s.refunded;
        session.closed = s.closed;
    }

    /// @notice The treasury's share of a session that has settled `cumulative` in total (rounded down).
    function feeFor(uint256 cumulative) public view returns (uint256) {
        return cumulative * feeBasisPoints / BPS;
    }

    /// @notice The EIP-712 domain separator receipts are signed under (this chain, this contract).
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    // ------------------------------------------------------------------------------------------ internals

    function _existing(bytes32 sessionId) private view returns (Stored storage s) {
        s = _sessions[sessionId];
        if (s.client == address(0)) revert UnknownSession();
    }

    /// @dev The session, if the caller may settle or close it now.
    function _settleable(bytes32 sessionId) private view returns (Stored storage s) {
        s = _existing(sessionId);
        if (s.closed) revert SessionClosedAlready();
        if (msg.sender != s.host) revert NotHost();
        if (block.timestamp >= s.expiry) revert Expired(s.expiry);
    }

    /// @dev Reverts unless `signature` is the client's valid, non-malleable (low-s, v 27/28, 65 bytes)
    ///      signature of Receipt{sessionId, amount} under this contract's domain, and `amount` fits the
    ///      deposit.
    function _checkReceipt(bytes32 sessionId, Stored storage s, uint256 amount, bytes calldata signature)
        private
        view
    {
        bytes32 digest = _hashTypedDataV4(keccak256(abi.encode(RECEIPT_TYPEHASH, sessionId, amount)));
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecoverCalldata(digest, signature);
        if (err != ECDSA.RecoverError.NoError || signer != s.client) revert InvalidSignature();
        if (amount > s.deposit) revert AmountAboveDeposit(s.deposit);
    }

    /// @dev Moves `settled` up to `amount` (> settled, <= deposit, checked by the caller) and returns what
    ///      the increment pays: the fee increment on the cumulative amount to the treasury, the rest to the
    ///      host. The caller transfers them after every other effect.
    function _book(bytes32 sessionId, Stored storage s, uint256 amount)
        private
        returns (uint256 hostAmount, uint256 fee)
    {
        uint256 previous = s.settled;
        uint256 increment = amount - previous;
        fee = feeFor(amount) - feeFor(previous);
        hostAmount = increment - fee;
        s.settled = amount;
        emit Settled(sessionId, increment, hostAmount, fee, amount);
    }

    /// @dev Marks the session closed and books the refund of what is still locked; returns it.
    function _finish(Stored storage s) private returns (uint256 refund) {
        refund = s.deposit - s.settled - s.refunded;
        s.refunded += refund;
        s.closed = true;
    }

    /// @dev Sends `amount` of `token` (address(0): ETH) to `to`; nothing when the amount is 0.
    function _transfer(address token, address to, uint256 amount) private {
        if (amount == 0) return;
        if (token == address(0)) {
            (bool ok,) = payable(to).call{value: amount}("");
            if (!ok) revert TransferFailed();
        } else {
            IERC20(token).safeTransfer(to, amount);
        }
    }
}
